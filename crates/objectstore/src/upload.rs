//! A streamed, parallel multipart upload fed by a blocking producer.
//!
//! The producer runs on a blocking thread and writes into a [`PartWriter`]: each full part (16
//! MiB by default) is handed over a channel of one slot to the async side, which uploads up to
//! `concurrency` parts at once. With every slot taken the producer blocks: at most
//! `concurrency + 2` parts are in memory. A thread of its own hashes the parts as they come
//! (sha256), off the producer's thread, and the writer counts them.
//! counts it. An object smaller than one part is sent with a single `PutObject`.
//!
//! The object exists only once the producer returned `Ok` and every part was stored
//! (`CompleteMultipartUpload`). A part that fails, a producer that fails or panics, and a call
//! dropped midway each abort the multipart upload (`AbortMultipartUpload`; on drop, from a task
//! spawned on the runtime): no object, and no upload left in progress when the store answers.

use std::io::{self, Write};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::{Store, StoreError};

/// S3's smallest part but the last.
pub const MIN_PART_SIZE: usize = 5 << 20;

/// How an upload is cut and sent.
#[derive(Clone, Copy, Debug)]
pub struct UploadOptions {
    /// Bytes per part (at least [`MIN_PART_SIZE`]; a smaller value is raised to it).
    pub part_size: usize,
    /// Parts uploaded at once (at least 1).
    pub concurrency: usize,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            part_size: 16 << 20,
            concurrency: 4,
        }
    }
}

/// An object stored by [`Store::upload`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uploaded {
    /// Its bucket.
    pub bucket: String,
    /// Its key.
    pub key: String,
    /// `sha256:<hex>` of the whole object.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Parts it was sent in (1 for a single `PutObject`).
    pub parts: usize,
}

/// Why an upload stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum UploadError<E: std::error::Error + 'static> {
    /// The object store failed (whatever the producer then did: its write failed because of it).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The producer failed.
    #[error(transparent)]
    Producer(E),
    /// The producer panicked.
    #[error("the producer of s3://{bucket}/{key} panicked (a bug): nothing was stored")]
    Panicked {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
}

/// What the producer hands the async side.
enum Message {
    /// A full part.
    Part(Vec<u8>),
    /// The producer finished cleanly: the rest of the object (maybe empty).
    Last(Vec<u8>),
}

/// The `std::io::Write` a producer writes the object into (see the module's docs).
pub struct PartWriter {
    buf: Vec<u8>,
    part_size: usize,
    tx: mpsc::Sender<Message>,
    size: u64,
}

impl PartWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.size
    }

    fn hand_over(&mut self, message: Message) -> io::Result<()> {
        self.tx.blocking_send(message).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the upload stopped (the object store failed): nothing is stored",
            )
        })
    }
}

impl Write for PartWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() == self.part_size {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.part_size));
            self.hand_over(Message::Part(full))?;
        }
        let n = data.len().min(self.part_size - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Store {
    /// Uploads to `s3://bucket/key` what `produce` writes, `produce` running on a blocking
    /// thread; returns what it returned and the object stored. Nothing is stored unless it
    /// returns `Ok` (see the module's docs).
    pub async fn upload<T, E, F>(
        &self,
        bucket: &str,
        key: &str,
        options: UploadOptions,
        produce: F,
    ) -> Result<(T, Uploaded), UploadError<E>>
    where
        F: FnOnce(&mut PartWriter) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: std::error::Error + Send + 'static,
    {
        let part_size = options.part_size.max(MIN_PART_SIZE);
        let (tx, rx) = mpsc::channel(1);
        let producer = tokio::task::spawn_blocking(move || {
            let mut w = PartWriter {
                buf: Vec::with_capacity(part_size),
                part_size,
                tx,
                size: 0,
            };
            let value = produce(&mut w)?;
            let rest = std::mem::take(&mut w.buf);
            // Refused only once the async side failed; it reports why.
            let _ = w.hand_over(Message::Last(rest));
            Ok((value, w.size))
        });
        let mut sending = Sending {
            store: self,
            bucket,
            key,
            concurrency: options.concurrency.max(1),
            upload_id: None,
            parts: JoinSet::new(),
            done: Vec::new(),
            held: None,
            hasher: Some(Hasher::start()),
        };
        let stored = sending.run(rx).await;
        // The channel is closed now: a producer still writing fails at its next part.
        let produced = producer.await;
        match (stored, produced) {
            (Err(e), _) => Err(UploadError::Store(e)),
            (Ok(_), Ok(Err(e))) => Err(UploadError::Producer(e)),
            (Ok(Some((parts, sha256))), Ok(Ok((value, size)))) => Ok((
                value,
                Uploaded {
                    bucket: bucket.into(),
                    key: key.into(),
                    sha256,
                    size,
                    parts,
                },
            )),
            // Panicked (a producer that returned `Ok` always sent its last part).
            (Ok(_), Err(_) | Ok(Ok(_))) => Err(UploadError::Panicked {
                bucket: bucket.into(),
                key: key.into(),
            }),
        }
    }
}

/// The async side of one upload.
struct Sending<'a> {
    store: &'a Store,
    bucket: &'a str,
    key: &'a str,
    concurrency: usize,
    /// The multipart upload, once a second part showed the object needs one; aborted on drop
    /// unless completed.
    upload_id: Option<String>,
    /// Parts being uploaded.
    parts: JoinSet<Result<CompletedPart, StoreError>>,
    /// Parts stored.
    done: Vec<CompletedPart>,
    /// The first part, held until it is known whether the object is a single `PutObject`.
    held: Option<Bytes>,
    /// Hashes the object as its parts come.
    hasher: Option<Hasher>,
}

/// The sha256 of an object, computed on a blocking thread of its own from its parts in order.
struct Hasher {
    tx: mpsc::Sender<Bytes>,
    digest: tokio::task::JoinHandle<String>,
}

impl Hasher {
    fn start() -> Self {
        // Two parts queued at most: the parts are shared with their uploads, not copied.
        let (tx, mut rx) = mpsc::channel::<Bytes>(2);
        let digest = tokio::task::spawn_blocking(move || {
            let mut hash = Sha256::new();
            while let Some(part) = rx.blocking_recv() {
                hash.update(&part);
            }
            format!("sha256:{}", hex::encode(hash.finalize()))
        });
        Self { tx, digest }
    }

    /// `sha256:<hex>` of everything fed; `None` if its thread failed.
    async fn finish(self) -> Option<String> {
        drop(self.tx);
        self.digest.await.ok()
    }
}

impl Sending<'_> {
    /// Receives the producer's parts and stores them: `Some((parts, sha256))` once the object
    /// is stored, `None` when the producer stopped without finishing (then nothing is stored).
    async fn run(
        &mut self,
        mut rx: mpsc::Receiver<Message>,
    ) -> Result<Option<(usize, String)>, StoreError> {
        let result = self.receive(&mut rx).await;
        if !matches!(result, Ok(Some(_))) {
            drop(rx);
            self.abort().await;
        }
        result
    }

    async fn receive(
        &mut self,
        rx: &mut mpsc::Receiver<Message>,
    ) -> Result<Option<(usize, String)>, StoreError> {
        loop {
            let (data, last) = match rx.recv().await {
                None => return Ok(None),
                Some(Message::Part(data)) => (Bytes::from(data), false),
                Some(Message::Last(data)) => (Bytes::from(data), true),
            };
            if let Some(hasher) = &self.hasher {
                // Fails only if its thread is gone; `finish` then says so.
                let _ = hasher.tx.send(data.clone()).await;
            }
            if !last {
                self.part(data).await?;
                continue;
            }
            // The digest before the object is completed: a failure here leaves no object.
            let sha256 = match self.hasher.take() {
                Some(h) => h.finish().await,
                None => None,
            };
            let sha256 = sha256.ok_or_else(|| StoreError::Refused {
                at: self.request("hash"),
                detail: "the thread hashing the object failed (a bug)".into(),
                source: "no digest".into(),
            })?;
            let parts = self.last(data).await?;
            return Ok(Some((parts, sha256)));
        }
    }

    /// A full part: held while it may be the whole object, sent otherwise.
    async fn part(&mut self, data: Bytes) -> Result<(), StoreError> {
        match self.held.take() {
            None if self.upload_id.is_none() => self.held = Some(data),
            held => {
                if let Some(first) = held {
                    self.begin().await?;
                    self.send(first).await?;
                }
                self.send(data).await?;
            }
        }
        Ok(())
    }

    /// The rest of the object, the producer done: stores it; returns the number of parts.
    async fn last(&mut self, data: Bytes) -> Result<usize, StoreError> {
        if self.upload_id.is_none() && self.held.is_none() {
            self.put(data).await?;
            return Ok(1);
        }
        if let Some(first) = self.held.take() {
            self.begin().await?;
            self.send(first).await?;
        }
        // An empty last part is refused by S3 unless it is the only one.
        if !data.is_empty() {
            self.send(data).await?;
        }
        self.complete().await
    }

    async fn put(&self, data: Bytes) -> Result<(), StoreError> {
        self.store
            .client()
            .put_object()
            .bucket(self.bucket)
            .key(self.key)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.store.failed("upload", self.bucket, self.key, e))?;
        Ok(())
    }

    async fn begin(&mut self) -> Result<(), StoreError> {
        let out = self
            .store
            .client()
            .create_multipart_upload()
            .bucket(self.bucket)
            .key(self.key)
            .send()
            .await
            .map_err(|e| {
                self.store
                    .failed("begin the upload of", self.bucket, self.key, e)
            })?;
        self.upload_id = out.upload_id().map(str::to_string);
        if self.upload_id.is_none() {
            return Err(StoreError::Refused {
                at: self.request("begin the upload of"),
                detail: "the answer to CreateMultipartUpload has no upload id".into(),
                source: "no UploadId".into(),
            });
        }
        Ok(())
    }

    /// Starts uploading the next part, once fewer than `concurrency` are in flight.
    async fn send(&mut self, data: Bytes) -> Result<(), StoreError> {
        while self.parts.len() >= self.concurrency {
            self.reap().await?;
        }
        let number = (self.done.len() + self.parts.len() + 1) as i32;
        let request = self
            .store
            .client()
            .upload_part()
            .bucket(self.bucket)
            .key(self.key)
            .upload_id(self.upload_id.clone().unwrap_or_default())
            .part_number(number)
            .body(ByteStream::from(data));
        let (store, bucket, key) = (
            self.store.clone(),
            self.bucket.to_string(),
            self.key.to_string(),
        );
        self.parts.spawn(async move {
            let out = request
                .send()
                .await
                .map_err(|e| store.failed("upload a part of", &bucket, &key, e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .build())
        });
        Ok(())
    }

    /// Waits for one part in flight.
    async fn reap(&mut self) -> Result<(), StoreError> {
        match self.parts.join_next().await {
            Some(Ok(part)) => {
                self.done.push(part?);
                Ok(())
            }
            Some(Err(e)) => Err(StoreError::Refused {
                at: self.request("upload a part of"),
                detail: format!("its task failed: {e}"),
                source: Box::new(e),
            }),
            None => Ok(()),
        }
    }

    async fn complete(&mut self) -> Result<usize, StoreError> {
        while !self.parts.is_empty() {
            self.reap().await?;
        }
        let mut parts = std::mem::take(&mut self.done);
        parts.sort_by_key(|p| p.part_number());
        let count = parts.len();
        self.store
            .client()
            .complete_multipart_upload()
            .bucket(self.bucket)
            .key(self.key)
            .upload_id(self.upload_id.clone().unwrap_or_default())
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                self.store
                    .failed("complete the upload of", self.bucket, self.key, e)
            })?;
        self.upload_id = None;
        Ok(count)
    }

    fn request(&self, op: &'static str) -> crate::error::Request {
        crate::error::Request {
            op,
            endpoint: self.store.endpoint().into(),
            bucket: self.bucket.into(),
            key: self.key.into(),
        }
    }

    /// `AbortMultipartUpload` of upload `id`.
    fn abort_request(
        &self,
        id: String,
    ) -> aws_sdk_s3::operation::abort_multipart_upload::builders::AbortMultipartUploadFluentBuilder
    {
        self.store
            .client()
            .abort_multipart_upload()
            .bucket(self.bucket)
            .key(self.key)
            .upload_id(id)
    }

    /// Aborts the multipart upload, if one was begun: its parts are dropped, no object appears.
    async fn abort(&mut self) {
        self.parts.abort_all();
        while self.parts.join_next().await.is_some() {}
        let Some(id) = self.upload_id.take() else {
            return;
        };
        if let Err(e) = self.abort_request(id).send().await {
            // The store is down: its incomplete upload was never visible as an object.
            eprintln!(
                "objectstore: cannot abort the upload of s3://{}/{} ({}): it holds no object; `ListMultipartUploads` shows it until it is aborted",
                self.bucket,
                self.key,
                aws_sdk_s3::error::DisplayErrorContext(&e)
            );
        }
    }
}

impl Drop for Sending<'_> {
    /// A call dropped midway: its multipart upload is aborted from a task of its own.
    fn drop(&mut self) {
        let Some(id) = self.upload_id.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let request = self.abort_request(id);
        runtime.spawn(async move {
            let _ = request.send().await;
        });
    }
}
