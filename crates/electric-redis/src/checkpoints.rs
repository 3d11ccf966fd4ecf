//! [`RedisCheckpoints`]: CDC source positions ([`Checkpoints`]) kept in Redis, next to the
//! documents they feed.
//!
//! # Key naming
//!
//! Checkpoint `name` of a store with namespace `ns` is the string key
//! `ns:{cdc:<name>}:checkpoint`. The braces are the cluster hash tag, so every checkpoint is
//! one key on one node (single-key `GET`/`SET`; nothing spans slots); the key lies in the
//! namespace's `ns:{*` pattern, so [`RedisStore::purge_namespace`] removes it too, and it cannot
//! collide with a document's keys (`ns:{p:s:id}:doc|log|fence` have three parts in the tag).
//! Names are validated by [`validate_checkpoint_name`] (`[A-Za-z0-9._-]`, at most 128 bytes).
//!
//! The value is `ecp1:` followed by the position in lower-case hex. Anything else under the key
//! is refused as [`CdcError::Checkpoint`] (not retryable), never read as a position.
//!
//! # Durability and errors
//!
//! `store` returns once Redis has applied the `SET`: it survives a crash of Electric, and a crash
//! of Redis as far as Redis's own persistence (AOF `appendfsync`) goes. A Redis that is
//! unreachable or times out is [`CdcError::Checkpoint`] with `retryable: true`; refused
//! credentials or a denied command (the ACL user needs `GET` and `SET` on `ns:{cdc:*`) are not
//! retryable.
//!
//! # Examples
//!
//! ```no_run
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use electric_core::cdc::{Checkpoints, Position};
//! use electric_redis::{RedisCheckpoints, RedisStore};
//!
//! let store = RedisStore::connect("redis://127.0.0.1:6379").await.unwrap();
//! let checkpoints = RedisCheckpoints::new(store);
//! checkpoints.store("pg.electric_slot", &Position::from_bytes(vec![0, 1])).await.unwrap();
//! assert_eq!(checkpoints.key("pg.electric_slot"), "electric:{cdc:pg.electric_slot}:checkpoint");
//! # });
//! ```

use async_trait::async_trait;
use electric_core::cdc::checkpoints::validate_checkpoint_name;
use electric_core::cdc::{CdcError, CdcResult, Checkpoints, Position};
use electric_core::Error;

use crate::RedisStore;

/// The prefix of a stored checkpoint value.
pub const CHECKPOINT_VALUE_PREFIX: &str = "ecp1:";

/// [`Checkpoints`] in Redis, through a [`RedisStore`]'s connection (single node or cluster).
/// Cheap to clone. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct RedisCheckpoints {
    store: RedisStore,
}

impl RedisCheckpoints {
    /// Checkpoints in `store`'s namespace.
    pub fn new(store: RedisStore) -> Self {
        Self { store }
    }

    /// The Redis key of checkpoint `name`: `ns:{cdc:<name>}:checkpoint`.
    pub fn key(&self, name: &str) -> String {
        format!(
            "{}:{{cdc:{name}}}:checkpoint",
            self.store.layout().namespace()
        )
    }

    fn err(name: &str, e: Error) -> CdcError {
        CdcError::Checkpoint {
            name: name.to_string(),
            retryable: e.is_retryable(),
            reason: e.to_string(),
        }
    }
}

#[async_trait]
impl Checkpoints for RedisCheckpoints {
    async fn load(&self, name: &str) -> CdcResult<Option<Position>> {
        validate_checkpoint_name(name)?;
        let value: Option<String> = self
            .store
            .query(redis::cmd("GET").arg(self.key(name)))
            .await
            .map_err(|e| Self::err(name, e))?;
        let Some(value) = value else {
            return Ok(None);
        };
        let bad = |reason: String| CdcError::Checkpoint {
            name: name.to_string(),
            reason,
            retryable: false,
        };
        let hex = value.strip_prefix(CHECKPOINT_VALUE_PREFIX).ok_or_else(|| {
            bad(format!(
                "{} holds {:?}, not a checkpoint",
                self.key(name),
                value.chars().take(40).collect::<String>()
            ))
        })?;
        Position::from_hex(hex)
            .map(Some)
            .map_err(|e| bad(e.to_string()))
    }

    async fn store(&self, name: &str, position: &Position) -> CdcResult<()> {
        validate_checkpoint_name(name)?;
        let value = format!("{CHECKPOINT_VALUE_PREFIX}{}", position.to_hex());
        let _: () = self
            .store
            .query(redis::cmd("SET").arg(self.key(name)).arg(value))
            .await
            .map_err(|e| Self::err(name, e))?;
        Ok(())
    }
}
