//! Document addresses: [`Key`] and [`SectionId`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The longest partition, section or id accepted, in bytes.
pub const MAX_KEY_PART_LEN: usize = 256;

/// Characters no key part may hold: `:` separates parts in storage keys and channel names,
/// `{` `}` delimit cluster hash tags, and `*` `?` `[` `]` are glob characters in pattern subscriptions.
pub const RESERVED_KEY_CHARS: &[char] = &[':', '{', '}', '*', '?', '[', ']'];

/// The address of one document: the original's `PartitionKey`, `Section` and `DataKey`.
///
/// Every part is validated on construction (see [`Key::new`]), so a `Key` can always be turned into
/// a storage key or channel name without escaping.
///
/// # Examples
///
/// ```
/// use electric_core::Key;
///
/// let key = Key::new("intraday", "depths", "MCP_20231115").unwrap();
/// assert_eq!(key.to_string(), "intraday:depths:MCP_20231115");
/// assert!(Key::new("intraday", "depths", "a:b").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "RawKey")]
pub struct Key {
    partition: String,
    section: String,
    id: String,
}

#[derive(Deserialize)]
struct RawKey {
    partition: String,
    section: String,
    id: String,
}

impl TryFrom<RawKey> for Key {
    type Error = Error;
    fn try_from(raw: RawKey) -> Result<Self> {
        Key::new(raw.partition, raw.section, raw.id)
    }
}

/// Checks one key part; `part` names it in the error.
pub fn validate_part(part: &'static str, value: &str) -> Result<()> {
    let reason = if value.is_empty() {
        Some("must not be empty")
    } else if value.len() > MAX_KEY_PART_LEN {
        Some("longer than 256 bytes")
    } else if value.contains(RESERVED_KEY_CHARS) {
        Some("holds a reserved character (one of : { } * ? [ ])")
    } else if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("holds whitespace or a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidKey {
            part,
            value: value.chars().take(64).collect(),
            reason,
        }),
        None => Ok(()),
    }
}

impl Key {
    /// Builds a key, rejecting empty parts, parts over [`MAX_KEY_PART_LEN`] bytes, and parts holding
    /// whitespace, control characters or one of [`RESERVED_KEY_CHARS`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] naming the offending part.
    pub fn new(
        partition: impl Into<String>,
        section: impl Into<String>,
        id: impl Into<String>,
    ) -> Result<Self> {
        let (partition, section, id) = (partition.into(), section.into(), id.into());
        validate_part("partition", &partition)?;
        validate_part("section", &section)?;
        validate_part("id", &id)?;
        Ok(Key {
            partition,
            section,
            id,
        })
    }

    /// The partition (the original's `PartitionKey`).
    pub fn partition(&self) -> &str {
        &self.partition
    }

    /// The section (the original's `Section`).
    pub fn section(&self) -> &str {
        &self.section
    }

    /// The document id (the original's `DataKey`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The section this key belongs to.
    pub fn section_id(&self) -> SectionId {
        SectionId {
            partition: self.partition.clone(),
            section: self.section.clone(),
        }
    }

    /// Whether this key lies in `section`.
    pub fn in_section(&self, section: &SectionId) -> bool {
        self.partition == section.partition && self.section == section.section
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.partition, self.section, self.id)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

/// A partition and section: the unit of subscription.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SectionId {
    partition: String,
    section: String,
}

impl SectionId {
    /// Builds a section id with the same rules as [`Key::new`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] naming the offending part.
    pub fn new(partition: impl Into<String>, section: impl Into<String>) -> Result<Self> {
        let (partition, section) = (partition.into(), section.into());
        validate_part("partition", &partition)?;
        validate_part("section", &section)?;
        Ok(SectionId { partition, section })
    }

    /// The partition.
    pub fn partition(&self) -> &str {
        &self.partition
    }

    /// The section.
    pub fn section(&self) -> &str {
        &self.section
    }

    /// The key of document `id` in this section.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] if `id` is not a valid id.
    pub fn key(&self, id: impl Into<String>) -> Result<Key> {
        let id = id.into();
        validate_part("id", &id)?;
        Ok(Key {
            partition: self.partition.clone(),
            section: self.section.clone(),
            id,
        })
    }
}

impl fmt::Display for SectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.partition, self.section)
    }
}

impl fmt::Debug for SectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SectionId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_parts() {
        for bad in ["", "a:b", "a{b", "a}b", "a*", "a b", "a\nb", "a?", "[x]"] {
            assert!(
                matches!(
                    Key::new("p", "s", bad),
                    Err(Error::InvalidKey { part: "id", .. })
                ),
                "{bad:?} accepted"
            );
        }
        assert!(Key::new("p", "s", "x".repeat(257)).is_err());
        assert!(Key::new("p", "s", "x".repeat(256)).is_ok());
        assert!(matches!(
            Key::new("", "s", "x"),
            Err(Error::InvalidKey {
                part: "partition",
                ..
            })
        ));
    }

    #[test]
    fn deserialization_validates() {
        let ok: Key = serde_json::from_str(r#"{"partition":"p","section":"s","id":"x"}"#).unwrap();
        assert_eq!(ok.id(), "x");
        assert!(
            serde_json::from_str::<Key>(r#"{"partition":"p","section":"s","id":"x:y"}"#).is_err()
        );
    }
}
