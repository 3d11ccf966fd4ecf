//! Compression codecs, named in a message header so any consumer decodes any message.
//!
//! A producer picks one [`Codec`]; the payload is compressed before it is sent and the codec's
//! [name](Codec::name) goes into the [`CONTENT_ENCODING`](super::headers::CONTENT_ENCODING)
//! header (no header: not compressed). A consumer reads the header and decompresses, so
//! producers with different codecs can share a topic. On Pulsar the codec is Pulsar's own
//! (the broker's message metadata names it and every Pulsar client decodes it), so no header
//! is written there.
//!
//! The formats, so that other languages can read and write them:
//!
//! | name | format |
//! |---|---|
//! | `lz4` | an LZ4 *block*, preceded by the uncompressed length as 4 bytes little-endian (`lz4.block.compress(store_size=True)` in Python) |
//! | `zstd` | one Zstandard frame (level 3) |
//! | `snappy` | a *raw* Snappy block (not the framed format), as Pulsar's Java and C++ clients write it |
//! | `zlib` | an RFC 1950 zlib stream (level 6), as Pulsar's `ZLIB` |
//!
//! Decoding is bounded: a payload that would decompress to more than the limit it is given is
//! refused before (or while) it is expanded, so a small malicious message cannot exhaust memory.

use std::fmt;
use std::io::{Read, Write};
use std::str::FromStr;

/// A compression codec for message payloads. See the [module docs](self) for the formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// No compression.
    #[default]
    None,
    /// LZ4 block with a 4-byte little-endian length prefix (`lz4_flex`).
    Lz4,
    /// Zstandard, level 3 (`zstd`).
    Zstd,
    /// Raw Snappy block (`snap::raw`).
    Snappy,
    /// zlib, level 6 (`flate2`).
    Zlib,
}

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The header names a codec this build does not know.
    #[error("unknown codec {0:?}")]
    UnknownCodec(String),
    /// The payload is not valid for its codec.
    #[error("payload does not decompress as {codec}: {reason}")]
    Corrupt {
        /// The codec's name.
        codec: &'static str,
        /// What the decompressor reported.
        reason: String,
    },
    /// The payload would decompress to more than the limit.
    #[error("payload decompresses to more than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
}

impl Codec {
    /// Every codec, `None` first.
    pub const ALL: [Codec; 5] = [
        Codec::None,
        Codec::Lz4,
        Codec::Zstd,
        Codec::Snappy,
        Codec::Zlib,
    ];

    /// The codec's name as written in the header (`none`, `lz4`, `zstd`, `snappy`, `zlib`).
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
            Codec::Snappy => "snappy",
            Codec::Zlib => "zlib",
        }
    }

    /// The codec a header value names (`identity` and the empty string also mean `None`;
    /// names are case-insensitive).
    pub fn from_name(name: &str) -> Option<Codec> {
        let name = name.trim();
        Codec::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))
            .or_else(|| {
                (name.is_empty() || name.eq_ignore_ascii_case("identity")).then_some(Codec::None)
            })
    }

    /// Compresses `data`.
    ///
    /// # Errors
    ///
    /// The compressor failed (it does not for in-memory buffers, but its error is returned
    /// rather than assumed away).
    pub fn encode(self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Codec::None => Ok(data.to_vec()),
            Codec::Lz4 => Ok(lz4_flex::block::compress_prepend_size(data)),
            Codec::Zstd => zstd::bulk::compress(data, ZSTD_LEVEL),
            Codec::Snappy => snap::raw::Encoder::new()
                .compress_vec(data)
                .map_err(std::io::Error::other),
            Codec::Zlib => {
                let mut e = flate2::write::ZlibEncoder::new(
                    Vec::with_capacity(data.len() / 2 + 16),
                    flate2::Compression::new(ZLIB_LEVEL),
                );
                e.write_all(data)?;
                e.finish()
            }
        }
    }

    /// Decompresses `data`, refusing anything that would expand to more than `limit` bytes.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Corrupt`] for a payload that is not valid for the codec,
    /// [`DecodeError::TooLarge`] past `limit`.
    pub fn decode(self, data: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
        let corrupt = |reason: String| DecodeError::Corrupt {
            codec: self.name(),
            reason,
        };
        match self {
            Codec::None => {
                if data.len() > limit {
                    return Err(DecodeError::TooLarge { limit });
                }
                Ok(data.to_vec())
            }
            Codec::Lz4 => {
                let Some(prefix) = data.get(..4) else {
                    return Err(corrupt("shorter than its length prefix".into()));
                };
                let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
                if len as usize > limit {
                    return Err(DecodeError::TooLarge { limit });
                }
                lz4_flex::block::decompress_size_prepended(data).map_err(|e| corrupt(e.to_string()))
            }
            Codec::Zstd => {
                let decoder =
                    zstd::stream::read::Decoder::new(data).map_err(|e| corrupt(e.to_string()))?;
                read_bounded(decoder, limit, data.len()).map_err(|e| e.or_corrupt(corrupt))
            }
            Codec::Snappy => {
                let len = snap::raw::decompress_len(data).map_err(|e| corrupt(e.to_string()))?;
                if len > limit {
                    return Err(DecodeError::TooLarge { limit });
                }
                snap::raw::Decoder::new()
                    .decompress_vec(data)
                    .map_err(|e| corrupt(e.to_string()))
            }
            Codec::Zlib => read_bounded(flate2::read::ZlibDecoder::new(data), limit, data.len())
                .map_err(|e| e.or_corrupt(corrupt)),
        }
    }
}

const ZSTD_LEVEL: i32 = 3;
const ZLIB_LEVEL: u32 = 6;

enum BoundedReadError {
    TooLarge(usize),
    Io(std::io::Error),
}

impl BoundedReadError {
    fn or_corrupt(self, corrupt: impl FnOnce(String) -> DecodeError) -> DecodeError {
        match self {
            BoundedReadError::TooLarge(limit) => DecodeError::TooLarge { limit },
            BoundedReadError::Io(e) => corrupt(e.to_string()),
        }
    }
}

/// Reads a decompressing reader to its end, failing once it yields more than `limit` bytes.
fn read_bounded(reader: impl Read, limit: usize, hint: usize) -> Result<Vec<u8>, BoundedReadError> {
    let mut out = Vec::with_capacity(hint.saturating_mul(3).min(limit));
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(BoundedReadError::Io)?;
    if out.len() > limit {
        return Err(BoundedReadError::TooLarge(limit));
    }
    Ok(out)
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Codec {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Codec::from_name(s).ok_or_else(|| DecodeError::UnknownCodec(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..20_000u32)
            .flat_map(|i| format!("{{\"price\":{},\"qty\":{}}}", i % 97, i % 13).into_bytes())
            .collect()
    }

    #[test]
    fn every_codec_round_trips_and_compresses() {
        let data = sample();
        for codec in Codec::ALL {
            let encoded = codec.encode(&data).unwrap();
            if codec != Codec::None {
                assert!(encoded.len() < data.len() / 2, "{codec} did not compress");
            }
            assert_eq!(codec.decode(&encoded, data.len()).unwrap(), data, "{codec}");
            assert_eq!(Codec::from_name(codec.name()), Some(codec));
        }
    }

    #[test]
    fn empty_payloads_round_trip() {
        for codec in Codec::ALL {
            assert_eq!(
                codec.decode(&codec.encode(b"").unwrap(), 0).unwrap(),
                b"",
                "{codec}"
            );
        }
    }

    #[test]
    fn decoding_is_bounded() {
        let data = vec![b'a'; 100_000];
        for codec in Codec::ALL {
            let encoded = codec.encode(&data).unwrap();
            assert_eq!(
                codec.decode(&encoded, 99_999),
                Err(DecodeError::TooLarge { limit: 99_999 }),
                "{codec}"
            );
        }
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        let garbage = b"\xff\xfe\xfd definitely not compressed \x00\x01";
        for codec in Codec::ALL.into_iter().skip(1) {
            match codec.decode(garbage, 1 << 20) {
                Err(DecodeError::Corrupt { codec: name, .. }) => assert_eq!(name, codec.name()),
                Err(DecodeError::TooLarge { .. }) => {} // a length prefix read from garbage
                other => panic!("{codec}: {other:?}"),
            }
        }
        assert!(matches!(
            Codec::Lz4.decode(b"ab", 10),
            Err(DecodeError::Corrupt { .. })
        ));
    }

    #[test]
    fn snappy_is_the_raw_block_format() {
        // Raw Snappy starts with the uncompressed length as a varint; the framed format starts
        // with the stream identifier chunk 0xff 0x06 0x00 0x00 "sNaPpY".
        let encoded = Codec::Snappy.encode(b"hello hello hello hello").unwrap();
        assert_eq!(encoded[0], 23);
        assert_ne!(&encoded[..4], b"\xff\x06\x00\x00");
    }

    #[test]
    fn names_parse_case_insensitively() {
        assert_eq!("ZSTD".parse::<Codec>().unwrap(), Codec::Zstd);
        assert_eq!(Codec::from_name("identity"), Some(Codec::None));
        assert_eq!(
            "brotli".parse::<Codec>(),
            Err(DecodeError::UnknownCodec("brotli".into()))
        );
    }
}
