//! A streamed download read as a blocking `std::io::Read` (for a consumer on a blocking thread,
//! e.g. `boxarchive::install`): a task on the runtime pulls the object's body and hands its
//! chunks over a channel of a few slots, so at most a few chunks are in memory; the reader
//! blocks until the next one comes. Dropping the reader stops the task.

use std::io::{self, Read};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::{Store, StoreError};

/// Chunks of the body held between the task and the reader.
const SLOTS: usize = 8;

/// An object being downloaded; read it on a blocking thread (`Read` blocks on the runtime).
pub struct Download {
    rx: mpsc::Receiver<Result<Bytes, StoreError>>,
    chunk: Bytes,
    size: Option<u64>,
    failed: bool,
}

impl Download {
    /// The object's size, as the store announced it.
    pub fn size(&self) -> Option<u64> {
        self.size
    }
}

impl Read for Download {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            if self.failed {
                return Err(io::Error::other(
                    "the download failed (see the error before)",
                ));
            }
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => {
                    self.failed = true;
                    return Err(io::Error::other(e));
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

impl Store {
    /// Starts downloading `s3://bucket/key`: a missing object or an unreachable store fails
    /// here, before anything is read.
    pub async fn download(&self, bucket: &str, key: &str) -> Result<Download, StoreError> {
        let out = self
            .client()
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.failed("download", bucket, key, e))?;
        let size = out.content_length().map(|n| n.max(0) as u64);
        let mut body = out.body;
        let (tx, rx) = mpsc::channel(SLOTS);
        let (endpoint, bucket, key) = (
            self.endpoint().to_string(),
            bucket.to_string(),
            key.to_string(),
        );
        tokio::spawn(async move {
            let mut read = 0u64;
            loop {
                let next = match body.try_next().await {
                    Ok(Some(chunk)) => {
                        read += chunk.len() as u64;
                        Ok(chunk)
                    }
                    Ok(None) => return,
                    Err(e) => Err(StoreError::Interrupted {
                        endpoint: endpoint.clone(),
                        bucket: bucket.clone(),
                        key: key.clone(),
                        read,
                        source: Box::new(e),
                    }),
                };
                let failed = next.is_err();
                if tx.send(next).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Download {
            rx,
            chunk: Bytes::new(),
            size,
            failed: false,
        })
    }
}
