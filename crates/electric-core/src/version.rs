//! Versions, epochs and stamps.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A document version: 1 for the first commit, then 2, 3, … with no holes. 0 means "nothing yet".
pub type Version = u64;

/// Identifies one lifetime of a key in one store.
///
/// A key gets a fresh random epoch when it is created (or re-created after a delete, a flush or a
/// fail-over that lost it), so a replica can tell "the store moved on" (same epoch, higher version)
/// from "the store forgot and started again" (different epoch). Never zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(u64);

impl Epoch {
    /// A fresh random, non-zero epoch.
    pub fn random() -> Self {
        loop {
            let v: u64 = rand::random();
            if v != 0 {
                return Epoch(v);
            }
        }
    }

    /// Wraps a raw value; `None` for zero.
    pub fn from_raw(v: u64) -> Option<Self> {
        (v != 0).then_some(Epoch(v))
    }

    /// The raw value.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({self})")
    }
}

impl FromStr for Epoch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() != 16 {
            return Err(format!("epoch {s:?} is not 16 hex digits"));
        }
        let v = u64::from_str_radix(s, 16).map_err(|e| format!("epoch {s:?}: {e}"))?;
        Epoch::from_raw(v).ok_or_else(|| "epoch must not be zero".to_string())
    }
}

impl Serialize for Epoch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Epoch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Identifies one commit or delete: random, non-zero, shown as 16 lowercase hex digits.
///
/// The manager gives every write a fresh id and the store keeps it with the write (in the
/// change log for commits), so that after a reply is lost the writer can ask the store whether
/// that very write was applied ([`Store::resolve`](crate::store::Store::resolve)). A commit that
/// creates a key also gives the new lifetime its [`Epoch`] (`Epoch::from(id)`), so whether a
/// create was applied can be told from the document alone, and epochs stay random and unique.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommitId(u64);

impl CommitId {
    /// A fresh random, non-zero id.
    pub fn random() -> Self {
        CommitId(Epoch::random().get())
    }

    /// Wraps a raw value; `None` for zero.
    pub fn from_raw(v: u64) -> Option<Self> {
        (v != 0).then_some(CommitId(v))
    }

    /// The raw value.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl From<CommitId> for Epoch {
    /// The epoch of a key created by this commit.
    fn from(id: CommitId) -> Epoch {
        Epoch(id.0)
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommitId({self})")
    }
}

impl FromStr for CommitId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<Epoch>()
            .map(|e| CommitId(e.0))
            .map_err(|e| e.replace("epoch", "commit id"))
    }
}

impl Serialize for CommitId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CommitId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a document stands: its epoch and version.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Stamp {
    /// The key's current lifetime.
    pub epoch: Epoch,
    /// The version within that lifetime.
    pub version: Version,
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}@{}", self.version, self.epoch)
    }
}

/// Milliseconds since the Unix epoch, as stored in change times.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_ids_round_trip_as_hex_and_name_the_epoch_they_create() {
        let id = CommitId::random();
        let s = serde_json::to_string(&id).unwrap();
        assert_eq!(s.len(), 18);
        assert_eq!(serde_json::from_str::<CommitId>(&s).unwrap(), id);
        assert_eq!(Epoch::from(id).get(), id.get());
        assert_eq!(Epoch::from(id).to_string(), id.to_string());
        let err = "0000000000000000".parse::<CommitId>().unwrap_err();
        assert!(err.contains("commit id"), "{err}");
        assert!(CommitId::from_raw(0).is_none());
    }

    #[test]
    fn epoch_round_trips_as_hex() {
        let e = Epoch::random();
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(s.len(), 18);
        assert_eq!(serde_json::from_str::<Epoch>(&s).unwrap(), e);
        assert!(serde_json::from_str::<Epoch>("\"0000000000000000\"").is_err());
        assert!(serde_json::from_str::<Epoch>("\"xyz\"").is_err());
    }
}
