//! [`Checkpoints`] implementations: [`MemoryCheckpoints`] (tests, embedded demo) and
//! [`FileCheckpoints`] (a directory, one file per checkpoint). The Redis one is
//! `electric_redis::RedisCheckpoints`.
//!
//! Checkpoint names are validated by [`validate_checkpoint_name`]: 1 to 128 bytes of ASCII
//! letters, digits, `.`, `_` and `-`, not starting with `.` — safe as a file name on every
//! platform and as part of a Redis key.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{CdcError, CdcResult, Checkpoints, Position};

/// The longest checkpoint name accepted, in bytes.
pub const MAX_CHECKPOINT_NAME_LEN: usize = 128;

/// Checks a checkpoint name: 1 to [`MAX_CHECKPOINT_NAME_LEN`] bytes of `[A-Za-z0-9._-]`, not
/// starting with `.`.
///
/// # Errors
///
/// [`CdcError::Config`] naming what is wrong.
pub fn validate_checkpoint_name(name: &str) -> CdcResult<()> {
    let reason = if name.is_empty() {
        Some("is empty")
    } else if name.len() > MAX_CHECKPOINT_NAME_LEN {
        Some("is longer than 128 bytes")
    } else if name.starts_with('.') {
        Some("starts with '.'")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("holds a character other than A-Z a-z 0-9 . _ -")
    } else {
        None
    };
    match reason {
        Some(r) => Err(CdcError::Config(format!(
            "checkpoint name {:?} {r}",
            name.chars().take(64).collect::<String>()
        ))),
        None => Ok(()),
    }
}

/// Checkpoints in memory: lost with the process. For tests and the embedded demo. Cheap to
/// clone; clones share the positions.
#[derive(Clone, Debug, Default)]
pub struct MemoryCheckpoints {
    inner: Arc<Mutex<HashMap<String, Position>>>,
    stores: Arc<std::sync::atomic::AtomicU64>,
}

impl MemoryCheckpoints {
    /// No checkpoints yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many [`Checkpoints::store`] calls succeeded so far.
    pub fn store_count(&self) -> u64 {
        self.stores.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Position>> {
        // A panic while holding this lock cannot leave the map half-written.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Checkpoints for MemoryCheckpoints {
    async fn load(&self, name: &str) -> CdcResult<Option<Position>> {
        validate_checkpoint_name(name)?;
        Ok(self.map().get(name).cloned())
    }

    async fn store(&self, name: &str, position: &Position) -> CdcResult<()> {
        validate_checkpoint_name(name)?;
        self.map().insert(name.to_string(), position.clone());
        self.stores
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// The first line of every checkpoint file.
const FILE_MAGIC: &str = "electric-cdc-checkpoint v1";

/// Checkpoints in a directory: one file `<name>.ckpt` per checkpoint.
///
/// # File format
///
/// Three lines of ASCII: `electric-cdc-checkpoint v1`, the position in lower-case hex, and the
/// XXH3-64 of the hex line as 16 hex digits. A file that does not match — torn, truncated,
/// edited, or someone else's — is [`CdcError::Checkpoint`] (not retryable) on
/// [`load`](Checkpoints::load), never a panic and never a silently wrong position.
///
/// # Durability
///
/// `store` writes a temporary file in the same directory, `fsync`s it, renames it over
/// `<name>.ckpt` and `fsync`s the directory, so after `Ok` a crash or power loss leaves either
/// the old or the new position, never a mix. The blocking file I/O runs on Tokio's blocking
/// pool.
#[derive(Clone, Debug)]
pub struct FileCheckpoints {
    dir: Arc<PathBuf>,
}

impl FileCheckpoints {
    /// Checkpoints in `dir`, which is created (with its parents) if missing.
    ///
    /// # Errors
    ///
    /// [`CdcError::Checkpoint`] when the directory cannot be created or is not a directory.
    pub fn open(dir: impl Into<PathBuf>) -> CdcResult<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| CdcError::Checkpoint {
            name: String::new(),
            reason: format!("cannot create {}: {e}", dir.display()),
            retryable: false,
        })?;
        if !dir.is_dir() {
            return Err(CdcError::Checkpoint {
                name: String::new(),
                reason: format!("{} is not a directory", dir.display()),
                retryable: false,
            });
        }
        Ok(Self { dir: Arc::new(dir) })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding checkpoint `name`.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.ckpt"))
    }

    /// Parses a checkpoint file's text.
    fn parse(name: &str, text: &str) -> CdcResult<Position> {
        let bad = |reason: String| CdcError::Checkpoint {
            name: name.to_string(),
            reason,
            retryable: false,
        };
        let mut lines = text.split('\n');
        let (magic, hex, sum) = (lines.next(), lines.next(), lines.next());
        let rest: Vec<&str> = lines.collect();
        let (Some(magic), Some(hex), Some(sum)) = (magic, hex, sum) else {
            return Err(bad("torn or foreign checkpoint file (too few lines)".into()));
        };
        if magic != FILE_MAGIC {
            return Err(bad(format!(
                "not a checkpoint file (first line {:?})",
                magic.chars().take(40).collect::<String>()
            )));
        }
        if !(rest.is_empty() || rest == [""]) {
            return Err(bad("trailing data after the checksum".into()));
        }
        let want = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(hex.as_bytes()));
        if sum != want {
            return Err(bad("checksum mismatch (torn or edited file)".into()));
        }
        Position::from_hex(hex).map_err(|e| bad(e.to_string()))
    }

    fn io_err(name: &str, what: &str, e: std::io::Error) -> CdcError {
        use std::io::ErrorKind as K;
        let retryable = matches!(
            e.kind(),
            K::Interrupted | K::WouldBlock | K::TimedOut | K::StorageFull | K::ResourceBusy
        );
        CdcError::Checkpoint {
            name: name.to_string(),
            reason: format!("{what}: {e}"),
            retryable,
        }
    }

    fn store_blocking(dir: &Path, name: &str, position: &Position) -> CdcResult<()> {
        let hex = position.to_hex();
        let sum = xxhash_rust::xxh3::xxh3_64(hex.as_bytes());
        let text = format!("{FILE_MAGIC}\n{hex}\n{sum:016x}\n");
        let tmp = dir.join(format!(".{name}.tmp-{:016x}", rand::random::<u64>()));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| Self::io_err(name, "create temporary file", e))?;
            f.write_all(text.as_bytes())
                .map_err(|e| Self::io_err(name, "write", e))?;
            f.sync_all().map_err(|e| Self::io_err(name, "fsync", e))?;
            drop(f);
            std::fs::rename(&tmp, dir.join(format!("{name}.ckpt")))
                .map_err(|e| Self::io_err(name, "rename", e))?;
            // The rename is durable once the directory is synced (not possible on Windows,
            // where opening a directory fails; the rename is then as durable as the OS makes it).
            if let Ok(d) = std::fs::File::open(dir) {
                d.sync_all()
                    .map_err(|e| Self::io_err(name, "fsync directory", e))?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

#[async_trait]
impl Checkpoints for FileCheckpoints {
    async fn load(&self, name: &str) -> CdcResult<Option<Position>> {
        validate_checkpoint_name(name)?;
        let path = self.path_of(name);
        let owned = name.to_string();
        let read = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .map_err(|e| CdcError::Checkpoint {
                name: owned.clone(),
                reason: format!("reader task failed: {e}"),
                retryable: true,
            })?;
        match read {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => Self::parse(name, &text).map(Some),
                Err(_) => Err(CdcError::Checkpoint {
                    name: owned,
                    reason: "not a checkpoint file (not UTF-8)".into(),
                    retryable: false,
                }),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io_err(name, "read", e)),
        }
    }

    async fn store(&self, name: &str, position: &Position) -> CdcResult<()> {
        validate_checkpoint_name(name)?;
        let (dir, owned, position) = (self.dir.clone(), name.to_string(), position.clone());
        tokio::task::spawn_blocking(move || Self::store_blocking(&dir, &owned, &position))
            .await
            .map_err(|e| CdcError::Checkpoint {
                name: name.to_string(),
                reason: format!("writer task failed: {e}"),
                retryable: true,
            })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(b: &[u8]) -> Position {
        Position::from_bytes(b.to_vec())
    }

    fn temp_dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "electric-ckpt-{tag}-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ))
    }

    #[test]
    fn names_are_validated() {
        for ok in ["a", "pg.electric_slot", "A-1_b.c", &"x".repeat(128)] {
            assert!(validate_checkpoint_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "a:b",
            "a b",
            "é",
            "..",
            &"x".repeat(129),
        ] {
            assert!(
                matches!(validate_checkpoint_name(bad), Err(CdcError::Config(_))),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn memory_round_trips_and_counts() {
        let c = MemoryCheckpoints::new();
        assert_eq!(c.load("a").await.unwrap(), None);
        c.store("a", &pos(&[1, 2])).await.unwrap();
        c.store("b", &pos(&[3])).await.unwrap();
        c.store("a", &pos(&[1, 3])).await.unwrap();
        assert_eq!(c.load("a").await.unwrap(), Some(pos(&[1, 3])));
        assert_eq!(c.clone().load("b").await.unwrap(), Some(pos(&[3])));
        assert_eq!(c.store_count(), 3);
        assert!(matches!(c.load("a/b").await, Err(CdcError::Config(_))));
    }

    #[tokio::test]
    async fn file_round_trips_overwrites_and_survives_reopen() {
        let dir = temp_dir("rt");
        let c = FileCheckpoints::open(&dir).unwrap();
        assert_eq!(c.load("slot").await.unwrap(), None);
        c.store("slot", &pos(&[0, 0xff, 7])).await.unwrap();
        c.store("slot", &pos(&[1, 2, 3, 4])).await.unwrap();
        c.store("other", &pos(&[])).await.unwrap();
        let again = FileCheckpoints::open(&dir).unwrap();
        assert_eq!(again.load("slot").await.unwrap(), Some(pos(&[1, 2, 3, 4])));
        assert_eq!(again.load("other").await.unwrap(), Some(pos(&[])));
        // No temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.iter().all(|n| n.ends_with(".ckpt")));
        assert!(matches!(
            c.store("../x", &pos(&[1])).await,
            Err(CdcError::Config(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn torn_or_foreign_files_are_typed_errors() {
        let dir = temp_dir("torn");
        let c = FileCheckpoints::open(&dir).unwrap();
        c.store("good", &pos(&[9, 8, 7])).await.unwrap();
        let good = std::fs::read(c.path_of("good")).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("torn", good[..good.len() / 2].to_vec()),
            ("torn2", good[..good.len() - 3].to_vec()),
            ("foreign", b"hello world\n".to_vec()),
            ("binary", vec![0xff, 0xfe, 0, 1]),
            (
                "edited",
                String::from_utf8(good.clone())
                    .unwrap()
                    .replace("090807", "090808")
                    .into_bytes(),
            ),
            ("trailing", [good.as_slice(), b"more\n"].concat()),
        ];
        for (name, bytes) in cases {
            std::fs::write(c.path_of(name), bytes).unwrap();
            match c.load(name).await {
                Err(e @ CdcError::Checkpoint { .. }) => assert!(!e.is_retryable(), "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        assert_eq!(c.load("good").await.unwrap(), Some(pos(&[9, 8, 7])));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn open_refuses_a_file_as_directory() {
        let dir = temp_dir("notdir");
        std::fs::write(&dir, b"x").unwrap();
        assert!(matches!(
            FileCheckpoints::open(&dir),
            Err(CdcError::Checkpoint { .. })
        ));
        std::fs::remove_file(&dir).unwrap();
    }
}
