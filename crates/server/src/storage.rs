//! Artifact bytes in object storage: the local filesystem by default, any S3-compatible service
//! by configuration, both through the `object_store` crate.
//!
//! Uploads stream into a staging object while they are hashed, then move to a content-addressed
//! key (`images/<sha256>`), so a failed or refused upload leaves nothing under a real key and
//! identical bytes are stored once. Reads support byte ranges for resumable downloads; on the local
//! filesystem they read the file directly with large buffers.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectStore, WriteMultipart};
use sha2::{Digest, Sha256};

/// Where artifacts are stored: `file:PATH` or `s3://BUCKET[/PREFIX]`, with object_store options
/// for S3 (`aws_endpoint`, `aws_region`, `aws_access_key_id`, `aws_secret_access_key`,
/// `aws_allow_http`, …; the standard `AWS_*` environment variables apply too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    pub url: String,
    pub options: BTreeMap<String, String>,
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid artifact storage configuration: {0}")]
    Config(String),
    /// The upload was larger than allowed.
    #[error("the upload exceeds the {limit}-byte limit for artifacts")]
    TooLarge { limit: u64 },
    /// The client's body failed (disconnect, malformed multipart).
    #[error("the upload was interrupted: {0}")]
    Body(String),
    #[error("object {0} not found in artifact storage")]
    NotFound(String),
    #[error("artifact storage failed: {0}")]
    Backend(#[from] object_store::Error),
}

/// A file written to a staging key, with what it contains.
#[derive(Debug, Clone)]
pub struct Staged {
    pub key: String,
    pub size: u64,
    pub sha256: String,
    /// The first bytes (file-type checks such as the ELF magic of a symbols file).
    pub head: Vec<u8>,
}

/// A (possibly partial) object being read.
pub struct ObjectRead {
    /// Size of the whole object.
    pub size: u64,
    /// The bytes of the requested range.
    pub stream: BoxStream<'static, Result<Bytes, std::io::Error>>,
}

/// Handle to the artifact store. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// `file:/path` or `s3://bucket/prefix`, for logs.
    pub description: String,
}

/// Size of each part of a multipart upload (S3's minimum part is 5 MiB).
const PART_SIZE: usize = 8 << 20;
/// Read size for local files: large enough that a download is not bound by per-chunk overhead
/// (each chunk is one hand-off to the blocking pool and back).
const READ_CHUNK: usize = 1 << 20;

impl Storage {
    /// Opens the store named by `config`, creating a local directory if needed.
    pub fn open(config: &StorageConfig) -> Result<Storage, StorageError> {
        let url = config.url.as_str();
        if let Some(path) = url
            .strip_prefix("file://")
            .or_else(|| url.strip_prefix("file:"))
        {
            if path.is_empty() {
                return Err(StorageError::Config("file: needs a directory".into()));
            }
            std::fs::create_dir_all(path).map_err(|e| {
                StorageError::Config(format!("cannot create artifact directory {path}: {e}"))
            })?;
            let store = LocalFileSystem::new_with_prefix(path)
                .map_err(|e| StorageError::Config(format!("artifact directory {path}: {e}")))?;
            return Ok(Storage {
                store: Arc::new(store),
                description: format!("file:{path}"),
            });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(StorageError::Config(format!("{url}: no bucket name")));
            }
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            for (key, value) in &config.options {
                let key: AmazonS3ConfigKey = key.parse().map_err(|_| {
                    StorageError::Config(format!(
                        "unknown S3 option {key:?} (see docs/artifacts.md)"
                    ))
                })?;
                builder = builder.with_config(key, value);
            }
            let store = builder
                .build()
                .map_err(|e| StorageError::Config(format!("{url}: {e}")))?;
            let store: Arc<dyn ObjectStore> = if prefix.trim_matches('/').is_empty() {
                Arc::new(store)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(
                    store,
                    prefix.trim_matches('/'),
                ))
            };
            return Ok(Storage {
                store,
                description: url.to_owned(),
            });
        }
        Err(StorageError::Config(format!(
            "{url:?}: use file:PATH or s3://BUCKET[/PREFIX]"
        )))
    }

    /// Checks that the store answers (a listing of one prefix), so a wrong bucket or endpoint
    /// fails at start-up rather than on the first upload.
    pub async fn check(&self) -> Result<(), StorageError> {
        let mut listing = self.store.list(Some(&ObjectPath::from("images")));
        match listing.next().await {
            Some(Err(e)) => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Streams `chunks` into a new staging object, hashing it, refusing more than `limit` bytes.
    /// Nothing is left behind when it fails.
    pub async fn stage<S, E>(&self, mut chunks: S, limit: u64) -> Result<Staged, StorageError>
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let key = format!("staging/{}", random_name());
        let upload = self
            .store
            .put_multipart(&ObjectPath::from(key.as_str()))
            .await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut head = Vec::new();
        let outcome: Result<(), StorageError> = async {
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| StorageError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(StorageError::TooLarge { limit });
                }
                if head.len() < 64 {
                    let take = (64 - head.len()).min(chunk.len());
                    head.extend_from_slice(&chunk[..take]);
                }
                hasher.update(&chunk);
                writer.wait_for_capacity(4).await?;
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => {
                writer.finish().await?;
                Ok(Staged {
                    key,
                    size,
                    sha256: hex(&hasher.finalize()),
                    head,
                })
            }
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(error = %abort, key, "could not abort a failed upload");
                }
                Err(e)
            }
        }
    }

    /// Moves a staged object to its final key. When the final key exists already (the same
    /// bytes were uploaded before) the staged copy is simply dropped.
    pub async fn promote(&self, staged: &Staged, key: &str) -> Result<(), StorageError> {
        let to = ObjectPath::from(key);
        let from = ObjectPath::from(staged.key.as_str());
        match self.store.head(&to).await {
            Ok(meta) if meta.size == staged.size => {
                self.store.delete(&from).await?;
                Ok(())
            }
            _ => Ok(self.store.rename(&from, &to).await?),
        }
    }

    /// Stores a small object whole (deltas built by the server).
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        self.store.put(&ObjectPath::from(key), bytes.into()).await?;
        Ok(())
    }

    /// Reads a whole object into memory (delta generation needs both images).
    pub async fn read_all(&self, key: &str) -> Result<Bytes, StorageError> {
        match self.store.get(&ObjectPath::from(key)).await {
            Ok(result) => Ok(result.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => Err(StorageError::NotFound(key.into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads `range` of an object (all of it when `None`).
    pub async fn read(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<ObjectRead, StorageError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let result = match self.store.get_opts(&ObjectPath::from(key), options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StorageError::NotFound(key.into()))
            }
            Err(e) => return Err(e.into()),
        };
        let size = result.meta.size;
        let range = result.range.clone();
        let stream = match result.payload {
            GetResultPayload::File(file, _) => file_stream(file, range),
            GetResultPayload::Stream(stream) => stream.map_err(std::io::Error::other).boxed(),
        };
        Ok(ObjectRead { size, stream })
    }

    /// Deletes an object; a missing one is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Streams `range` of a local file with large reads on the blocking pool.
fn file_stream(
    file: std::fs::File,
    range: Range<u64>,
) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    use std::io::{Read, Seek, SeekFrom};
    let state = (file, range.start, range.end, false);
    futures::stream::try_unfold(state, |(mut file, pos, end, seeked)| async move {
        if pos >= end {
            return Ok(None);
        }
        let want = (end - pos).min(READ_CHUNK as u64) as usize;
        let (file, buf) = tokio::task::spawn_blocking(move || {
            if !seeked {
                file.seek(SeekFrom::Start(pos))?;
            }
            // Reading into spare capacity skips zero-filling a buffer the read overwrites anyway.
            let mut buf = Vec::with_capacity(want);
            (&mut file).take(want as u64).read_to_end(&mut buf)?;
            Ok::<_, std::io::Error>((file, buf))
        })
        .await
        .map_err(std::io::Error::other)??;
        if buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "artifact file is shorter than recorded",
            ));
        }
        let next = pos + buf.len() as u64;
        Ok(Some((Bytes::from(buf), (file, next, end, true))))
    })
    .boxed()
}

fn random_name() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    hex(&bytes)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
