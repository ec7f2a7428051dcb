//! Images from an OCI distribution registry: pull over plain HTTP with every digest checked while
//! the bytes stream, each layer unpacked once into a content-addressed cache, and a record of the
//! image (its layers and its config) that a sandbox bundle is built from.
//!
//! Cache layout (see the crate's README): `layers/sha256-<hex>/` unpacked layers,
//! `images/sha256-<hex>.json` image records by the digest the reference resolved to, `tmp/`
//! downloads and unpacks in progress (renamed into place only once verified).

mod error;
mod manifest;
mod reference;
mod unpack;

use std::fs;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::digest::{Digest, Hasher};
pub use error::PullError;
use manifest::{Compression, ConfigBlob, Descriptor, ManifestDoc};
pub use reference::{ImageRef, ReferenceError, Target};
pub use unpack::UnpackError;

/// Largest manifest or config blob read into memory.
const DOC_LIMIT: u64 = 4 << 20;

/// A pulled image: what a bundle needs, read back from the cache without the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// The reference it was last pulled as.
    pub reference: String,
    /// The digest the reference resolved to (an index's or a manifest's).
    pub digest: Digest,
    /// The linux/amd64 image manifest's digest (same as `digest` without an index).
    pub manifest_digest: Digest,
    /// The config blob's digest.
    pub config_digest: Digest,
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
    /// How the image wants to be run.
    pub config: ImageConfig,
}

/// One layer of an [`Image`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    /// The (compressed) blob's digest: the cache key.
    pub digest: Digest,
    /// The uncompressed tar's digest, from the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
    /// The blob's size in bytes.
    pub size: u64,
}

/// The image config's runtime defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    /// `Entrypoint`, empty when unset: with `cmd` after it, what `Init::ImageCommand` runs as
    /// the sandbox's init.
    pub entrypoint: Vec<String>,
    /// `Cmd`, empty when unset.
    pub cmd: Vec<String>,
    /// `Env` as `KEY=value`: the base of the environment of every process in the sandbox (the
    /// init's and each exec's), under what the caller adds.
    pub env: Vec<String>,
    /// `WorkingDir`, `None` when unset or empty (then `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `User`, `None` when unset or empty (then root); names are looked up in the image's own
    /// /etc/passwd and /etc/group when a sandbox is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// The result of [`ImageStore::pull`]: the image and what this pull had to do.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The image, as recorded in the cache.
    pub image: Image,
    /// Blobs downloaded by this pull (config and layers): empty when the image was cached.
    pub downloaded: Vec<Digest>,
    /// Layers unpacked by this pull: empty when they were all cached.
    pub unpacked: Vec<Digest>,
}

/// The image cache of one runner, and the client that fills it.
///
/// One process owns a cache directory: [`ImageStore::open`] removes what an interrupted pull left
/// in `tmp/`. Concurrent pulls in that process are safe (a layer unpacked twice is renamed into
/// place once and the loser's copy removed).
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    http: reqwest::Client,
    tmp_seq: AtomicU64,
}

impl ImageStore {
    /// Opens (creating it if needed) the cache at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, PullError> {
        let root = root.into();
        for dir in ["layers", "images"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(PullError::io("create", &path))?;
        }
        let tmp = root.join("tmp");
        if tmp.exists() {
            crate::layout::remove_all(&tmp).map_err(PullError::io("clear", &tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(PullError::io("create", &tmp))?;
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|source| PullError::Request {
                url: String::new(),
                source,
            })?;
        Ok(Self {
            root,
            http,
            tmp_seq: AtomicU64::new(0),
        })
    }

    /// The cache's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the layer with blob digest `digest` is (or would be) unpacked.
    pub fn layer_dir(&self, digest: &Digest) -> PathBuf {
        self.root.join("layers").join(digest.file_name())
    }

    fn record_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{}.json", digest.file_name()))
    }

    /// The cached image whose reference resolved to `digest`, if it and all its layers are here.
    pub fn cached(&self, digest: &Digest) -> Result<Option<Image>, PullError> {
        let path = self.record_path(digest);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PullError::io("read", &path)(e)),
        };
        let image: Image =
            serde_json::from_slice(&bytes).map_err(|source| PullError::Malformed {
                what: "cached image record",
                url: path.display().to_string(),
                source,
            })?;
        let complete = image
            .layers
            .iter()
            .all(|l| self.layer_dir(&l.digest).is_dir());
        Ok(complete.then_some(image))
    }

    /// Pulls `image` unless it is cached: the reference is resolved with one `HEAD` (tags move),
    /// and nothing else is fetched when the digest it names is already here.
    pub async fn pull(&self, image: &ImageRef) -> Result<Pulled, PullError> {
        let resolved = match &image.target {
            Target::Digest(d) => Some(d.clone()),
            Target::Tag(_) => self.head_manifest(image).await?,
        };
        if let Some(digest) = &resolved {
            if let Some(mut cached) = self.cached(digest)? {
                cached.reference = image.to_string();
                return Ok(Pulled {
                    image: cached,
                    downloaded: Vec::new(),
                    unpacked: Vec::new(),
                });
            }
        }
        let reference = resolved
            .as_ref()
            .map_or_else(|| image.target.to_string(), Digest::to_string);
        let (top_digest, doc) = self
            .get_manifest(image, &reference, resolved.as_ref())
            .await?;
        let (manifest_digest, doc) = match doc.manifests {
            Some(list) => {
                let pick = list
                    .iter()
                    .find(|d| {
                        d.platform
                            .as_ref()
                            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                    })
                    .ok_or_else(|| PullError::NoPlatform {
                        image: image.to_string(),
                    })?;
                let digest = pick.digest.clone();
                let (_, doc) = self
                    .get_manifest(image, &digest.to_string(), Some(&digest))
                    .await?;
                (digest, doc)
            }
            None => (top_digest.clone(), doc),
        };
        let malformed = |what| PullError::MissingField {
            image: image.to_string(),
            what,
        };
        let config_desc = doc.config.ok_or_else(|| malformed("config"))?;
        let layer_descs = doc.layers.ok_or_else(|| malformed("layers"))?;

        let mut downloaded = Vec::new();
        let config_bytes = self.get_blob_bytes(image, &config_desc).await?;
        downloaded.push(config_desc.digest.clone());
        let config: ConfigBlob =
            serde_json::from_slice(&config_bytes).map_err(|source| PullError::Malformed {
                what: "image config",
                url: self.blob_url(image, &config_desc.digest),
                source,
            })?;
        if config.architecture.as_deref().is_some_and(|a| a != "amd64") {
            return Err(PullError::NoPlatform {
                image: image.to_string(),
            });
        }
        if config.rootfs.diff_ids.len() != layer_descs.len() {
            return Err(PullError::LayerCount {
                image: image.to_string(),
                layers: layer_descs.len(),
                diff_ids: config.rootfs.diff_ids.len(),
            });
        }

        let mut layers = Vec::new();
        let mut unpacked = Vec::new();
        for (desc, diff_id) in layer_descs.iter().zip(&config.rootfs.diff_ids) {
            if !self.layer_dir(&desc.digest).is_dir() {
                self.fetch_layer(image, desc, diff_id).await?;
                downloaded.push(desc.digest.clone());
                unpacked.push(desc.digest.clone());
            }
            layers.push(Layer {
                digest: desc.digest.clone(),
                diff_id: diff_id.clone(),
                size: desc.size,
            });
        }

        let c = config.config.unwrap_or_default();
        let record = Image {
            reference: image.to_string(),
            digest: top_digest,
            manifest_digest,
            config_digest: config_desc.digest,
            layers,
            config: ImageConfig {
                entrypoint: c.entrypoint.unwrap_or_default(),
                cmd: c.cmd.unwrap_or_default(),
                env: c.env.unwrap_or_default(),
                working_dir: c.working_dir.filter(|w| !w.is_empty()),
                user: c.user.filter(|u| !u.is_empty()),
            },
        };
        self.write_record(&record)?;
        Ok(Pulled {
            image: record,
            downloaded,
            unpacked,
        })
    }

    /// The digest `image` names in the registry now, downloading nothing else: one `HEAD` (a
    /// `GET` of the manifest when the registry sends no digest). `NotFound` when it is not there.
    /// For a driver that pulls images itself (BoxLite), pinned to this digest.
    pub async fn resolve(&self, image: &ImageRef) -> Result<Digest, PullError> {
        match self.head_manifest(image).await? {
            Some(digest) => Ok(digest),
            None => {
                let reference = image.target.to_string();
                Ok(self.get_manifest(image, &reference, None).await?.0)
            }
        }
    }

    fn manifest_url(&self, image: &ImageRef, reference: &str) -> String {
        format!(
            "{}/v2/{}/manifests/{}",
            image.base_url(),
            image.repository,
            reference
        )
    }

    fn blob_url(&self, image: &ImageRef, digest: &Digest) -> String {
        format!(
            "{}/v2/{}/blobs/{}",
            image.base_url(),
            image.repository,
            digest
        )
    }

    /// The digest a tag names, from the registry's `Docker-Content-Digest` header (`None` when the
    /// registry does not send it: the manifest's bytes are hashed instead).
    async fn head_manifest(&self, image: &ImageRef) -> Result<Option<Digest>, PullError> {
        let reference = image.target.to_string();
        let (_, resp) = self
            .manifest_request(reqwest::Method::HEAD, image, &reference)
            .await?;
        let digest = resp
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok());
        Ok(digest.and_then(|d| Digest::parse(d).ok()))
    }

    /// Sends a manifest request accepting every kind this module reads; a 404 is `NotFound`.
    async fn manifest_request(
        &self,
        method: reqwest::Method,
        image: &ImageRef,
        reference: &str,
    ) -> Result<(String, reqwest::Response), PullError> {
        let url = self.manifest_url(image, reference);
        let request = self
            .http
            .request(method, &url)
            .header("Accept", manifest::accept_header());
        let resp = self.send(request, &url).await?;
        check_status(&resp, image, &url)?;
        Ok((url, resp))
    }

    async fn get_manifest(
        &self,
        image: &ImageRef,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<(Digest, ManifestDoc), PullError> {
        let (url, mut resp) = self
            .manifest_request(reqwest::Method::GET, image, reference)
            .await?;
        let mut bytes = Vec::new();
        let (actual, len) = read_body(&mut resp, &url, DOC_LIMIT, |chunk| {
            bytes.extend_from_slice(chunk);
            async { Ok(()) }
        })
        .await?;
        if len > DOC_LIMIT {
            return Err(PullError::TooLarge {
                url,
                limit: DOC_LIMIT,
            });
        }
        if let Some(expected) = expected {
            if &actual != expected {
                return Err(PullError::DigestMismatch {
                    what: "manifest",
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let doc: ManifestDoc =
            serde_json::from_slice(&bytes).map_err(|source| PullError::Malformed {
                what: "manifest",
                url: url.clone(),
                source,
            })?;
        if let Some(mt) = &doc.media_type {
            let known = [
                manifest::OCI_INDEX,
                manifest::OCI_MANIFEST,
                manifest::DOCKER_LIST,
                manifest::DOCKER_MANIFEST,
            ];
            if !known.contains(&mt.as_str()) {
                return Err(PullError::UnsupportedMediaType {
                    what: "manifest",
                    media_type: mt.clone(),
                });
            }
        }
        Ok((actual, doc))
    }

    async fn get_blob_bytes(
        &self,
        image: &ImageRef,
        desc: &Descriptor,
    ) -> Result<Vec<u8>, PullError> {
        let url = self.blob_url(image, &desc.digest);
        if desc.size > DOC_LIMIT {
            return Err(PullError::TooLarge {
                url,
                limit: DOC_LIMIT,
            });
        }
        let mut bytes = Vec::new();
        self.stream_blob(image, desc, |chunk| {
            bytes.extend_from_slice(chunk);
            async { Ok(()) }
        })
        .await?;
        Ok(bytes)
    }

    /// Streams a blob through `sink`, checking its size and digest as it comes; the caller
    /// discards what it wrote when this fails.
    async fn stream_blob<F, Fut>(
        &self,
        image: &ImageRef,
        desc: &Descriptor,
        sink: F,
    ) -> Result<(), PullError>
    where
        F: FnMut(&[u8]) -> Fut,
        Fut: std::future::Future<Output = Result<(), PullError>>,
    {
        let url = self.blob_url(image, &desc.digest);
        let mut resp = self.send(self.http.get(&url), &url).await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(PullError::BlobNotFound {
                image: image.to_string(),
                digest: desc.digest.clone(),
            });
        }
        check_status(&resp, image, &url)?;
        let (actual, len) = read_body(&mut resp, &url, desc.size, sink).await?;
        if len != desc.size {
            return Err(PullError::SizeMismatch {
                digest: desc.digest.clone(),
                expected: desc.size,
                actual: len,
            });
        }
        if actual != desc.digest {
            return Err(PullError::DigestMismatch {
                what: "blob",
                expected: desc.digest.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Downloads a layer blob to `tmp/`, verified, then unpacks it to a temp dir renamed into
    /// `layers/` only when the whole tar checked out.
    async fn fetch_layer(
        &self,
        image: &ImageRef,
        desc: &Descriptor,
        diff_id: &Digest,
    ) -> Result<(), PullError> {
        let compression =
            Compression::of(&desc.media_type).ok_or_else(|| PullError::UnsupportedMediaType {
                what: "layer",
                media_type: desc.media_type.clone(),
            })?;
        let blob = self.tmp_path(&desc.digest, "blob");
        let staging = self.tmp_path(&desc.digest, "dir");
        let result = self
            .download_and_unpack(image, desc, diff_id, compression, &blob, &staging)
            .await;
        let _ = fs::remove_file(&blob);
        if result.is_err() {
            let _ = crate::layout::remove_all(&staging);
        }
        result
    }

    async fn download_and_unpack(
        &self,
        image: &ImageRef,
        desc: &Descriptor,
        diff_id: &Digest,
        compression: Compression,
        blob: &Path,
        staging: &Path,
    ) -> Result<(), PullError> {
        let file = tokio::fs::File::create(blob)
            .await
            .map_err(PullError::io("create", blob))?;
        let file = std::sync::Arc::new(tokio::sync::Mutex::new(file));
        self.stream_blob(image, desc, |chunk| {
            let file = file.clone();
            let chunk = chunk.to_vec();
            async move {
                let mut f = file.lock().await;
                f.write_all(&chunk)
                    .await
                    .map_err(PullError::io("write", blob))
            }
        })
        .await?;
        file.lock()
            .await
            .flush()
            .await
            .map_err(PullError::io("write", blob))?;

        fs::create_dir(staging).map_err(PullError::io("create", staging))?;
        let (blob_owned, staging_owned, diff_owned) =
            (blob.to_path_buf(), staging.to_path_buf(), diff_id.clone());
        let unpacked = tokio::task::spawn_blocking(move || -> Result<(), UnpackError> {
            let f = fs::File::open(&blob_owned).map_err(UnpackError::Read)?;
            let reader = BufReader::new(f);
            match compression {
                Compression::Gzip => unpack::unpack(
                    flate2::read::GzDecoder::new(reader),
                    &staging_owned,
                    &diff_owned,
                ),
                Compression::None => unpack::unpack(reader, &staging_owned, &diff_owned),
            }
        })
        .await
        .map_err(PullError::Task)?;
        unpacked.map_err(|source| PullError::Unpack {
            digest: desc.digest.clone(),
            source,
        })?;

        let dest = self.layer_dir(&desc.digest);
        match fs::rename(staging, &dest) {
            Ok(()) => Ok(()),
            // Another pull of the same layer won the race: its copy is as good as ours.
            Err(_) if dest.is_dir() => {
                let _ = crate::layout::remove_all(staging);
                Ok(())
            }
            Err(e) => Err(PullError::io("rename", &dest)(e)),
        }
    }

    fn tmp_path(&self, digest: &Digest, kind: &str) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}.{kind}", digest.file_name()))
    }

    fn write_record(&self, image: &Image) -> Result<(), PullError> {
        let path = self.record_path(&image.digest);
        let tmp = self.tmp_path(&image.digest, "json");
        let bytes = serde_json::to_vec_pretty(image).map_err(|source| PullError::Malformed {
            what: "image record",
            url: path.display().to_string(),
            source,
        })?;
        fs::write(&tmp, bytes).map_err(PullError::io("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(PullError::io("rename", &path))
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, PullError> {
        req.send().await.map_err(|source| PullError::Request {
            url: url.to_string(),
            source,
        })
    }
}

/// Streams a response body through `sink` while hashing it; stops reading once past `max` bytes
/// (the length returned is then more than `max`, and `sink` has seen only the first `max`-ish).
async fn read_body<F, Fut>(
    resp: &mut reqwest::Response,
    url: &str,
    max: u64,
    mut sink: F,
) -> Result<(Digest, u64), PullError>
where
    F: FnMut(&[u8]) -> Fut,
    Fut: std::future::Future<Output = Result<(), PullError>>,
{
    let mut hasher = Hasher::default();
    let request_err = |source| PullError::Request {
        url: url.to_string(),
        source,
    };
    while let Some(chunk) = resp.chunk().await.map_err(request_err)? {
        hasher.update(&chunk);
        if hasher.len() > max {
            break;
        }
        sink(&chunk).await?;
    }
    let len = hasher.len();
    Ok((hasher.finish(), len))
}

fn check_status(resp: &reqwest::Response, image: &ImageRef, url: &str) -> Result<(), PullError> {
    match resp.status() {
        s if s.is_success() => Ok(()),
        reqwest::StatusCode::NOT_FOUND => Err(PullError::NotFound {
            image: image.to_string(),
        }),
        s => Err(PullError::Status {
            url: url.to_string(),
            status: s.as_u16(),
        }),
    }
}
