//! [`Hash`]: a blake3 digest, shown and serialised as 64 lowercase hex characters.

use std::fmt;

/// A blake3 content hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

const HEX: &[u8; 16] = b"0123456789abcdef";

impl Hash {
    /// blake3 of `b`.
    pub fn of_bytes(b: &[u8]) -> Hash {
        Hash(*blake3::hash(b).as_bytes())
    }

    /// blake3 of the content of the file at `path` (symlinks followed).
    pub fn of_file(path: &std::path::Path) -> crate::Result<Hash> {
        crate::fsutil::hash_file(path, false).map(|(h, _, _)| h)
    }

    /// 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
        s
    }

    /// The first 12 hex characters, for display.
    pub fn short(&self) -> String {
        let mut s = self.to_hex();
        s.truncate(12);
        s
    }

    /// Parse 64 hex characters (either case); `None` otherwise.
    pub fn from_hex(s: &str) -> Option<Hash> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(Hash(out))
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl From<blake3::Hash> for Hash {
    fn from(h: blake3::Hash) -> Hash {
        Hash(*h.as_bytes())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl serde::Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Hash, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Hash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 64-character hex blake3 hash")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Hash, E> {
                Hash::from_hex(v).ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blake3_vector_and_hex_round_trip() {
        // Official blake3 test vector for the empty input.
        let h = Hash::of_bytes(b"");
        assert_eq!(
            h.to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(h.short(), "af1349b9f5f9");
        assert_eq!(format!("{h}"), h.to_hex());
        assert_eq!(format!("{h:?}"), h.to_hex());
        assert_eq!(Hash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(Hash::from_hex(&h.to_hex().to_uppercase()), Some(h));
        assert_eq!(Hash::from_hex(&h.to_hex()[1..]), None);
        assert_eq!(Hash::from_hex(&format!("g{}", &h.to_hex()[1..])), None);
    }

    #[test]
    fn serde_as_hex_string() {
        let h = Hash::of_bytes(b"x");
        let j = serde_json::to_string(&h).unwrap();
        assert_eq!(j, format!("\"{}\"", h.to_hex()));
        let back: Hash = serde_json::from_str(&j).unwrap();
        assert_eq!(back, h);
        assert!(serde_json::from_str::<Hash>("\"abc\"").is_err());
    }
}
