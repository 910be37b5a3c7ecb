//! [`Tree`]: a directory manifest (relative path -> [`Entry`]) with a pinned canonical encoding.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{CacheError, Result};
use crate::hash::Hash;

/// One file of a [`Tree`]: its content hash, size in bytes and whether any exec bit was set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub hash: Hash,
    pub size: u64,
    pub executable: bool,
}

/// A directory manifest. Keys are relative paths, `/`-separated, with no leading `./`,
/// never absolute, never containing `.`/`..`/empty components, `\0` or `\n`
/// (see [`valid_rel_path`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub entries: BTreeMap<String, Entry>,
}

const HEADER: &str = "flow-tree-v1\n";

/// Why `p` is not a valid [`Tree`] key, or `None` if it is.
pub fn rel_path_problem(p: &str) -> Option<&'static str> {
    if p.is_empty() {
        return Some("empty path");
    }
    if p.starts_with('/') {
        return Some("absolute path");
    }
    if p.contains('\0') || p.contains('\n') {
        return Some("path contains NUL or newline");
    }
    for c in p.split('/') {
        match c {
            "" => return Some("empty path component"),
            "." | ".." => return Some("'.' or '..' path component"),
            _ => {}
        }
    }
    None
}

/// `p`, a relative path as a user writes it (`./a`, `a/../b`, `d/`), as the [`Tree`] key
/// it names (`a`, `b`, `d`); `Err` says why it names none: absolute, empty or only `.`,
/// climbing above its root, or containing NUL or a newline. This is *the* check that a
/// path given in a pipeline stays inside the directory it is relative to.
pub fn normalize_rel(p: &str) -> std::result::Result<String, &'static str> {
    if p.starts_with('/') {
        return Err("absolute path");
    }
    if p.contains('\0') || p.contains('\n') {
        return Err("path contains NUL or newline");
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err("path climbs above its root with `..`");
                }
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err("empty path (or only `.`)");
    }
    Ok(parts.join("/"))
}

/// Whether `p` may be a [`Tree`] key.
pub fn valid_rel_path(p: &str) -> bool {
    rel_path_problem(p).is_none()
}

impl Tree {
    /// `"flow-tree-v1\n"`, then per entry in path (byte) order
    /// `"{path}\0{hex}\0{size}\0{x|-}\n"`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER.len() + self.entries.len() * 100);
        out.extend_from_slice(HEADER.as_bytes());
        for (path, e) in &self.entries {
            out.extend_from_slice(path.as_bytes());
            out.push(0);
            out.extend_from_slice(e.hash.to_hex().as_bytes());
            out.push(0);
            out.extend_from_slice(e.size.to_string().as_bytes());
            out.push(0);
            out.push(if e.executable { b'x' } else { b'-' });
            out.push(b'\n');
        }
        out
    }

    /// blake3 of [`Tree::canonical_bytes`]; equal to the object hash [`crate::Store::put_tree`] returns.
    pub fn hash(&self) -> Hash {
        Hash::of_bytes(&self.canonical_bytes())
    }

    /// Sum of the entry sizes.
    pub fn total_size(&self) -> u64 {
        self.entries.values().map(|e| e.size).sum()
    }

    /// Inverse of [`Tree::canonical_bytes`]. Strict: anything that would not re-encode to
    /// exactly `bytes` (wrong order, duplicates, upper-case hex, leading zeros, bad paths) is an error.
    pub fn parse(bytes: &[u8]) -> Result<Tree> {
        let bad = |line: usize, what: String| CacheError::BadTree { line, what };
        let text = std::str::from_utf8(bytes).map_err(|e| bad(0, format!("not UTF-8: {e}")))?;
        let body = text
            .strip_prefix(HEADER)
            .ok_or_else(|| bad(1, "missing header \"flow-tree-v1\"".into()))?;
        let mut entries = BTreeMap::new();
        if !body.is_empty() {
            let body = body
                .strip_suffix('\n')
                .ok_or_else(|| bad(0, "does not end with a newline".into()))?;
            for (i, line) in body.split('\n').enumerate() {
                let n = i + 2;
                let f: Vec<&str> = line.split('\0').collect();
                if f.len() != 4 {
                    return Err(bad(n, format!("expected 4 fields, found {}", f.len())));
                }
                let path = f[0];
                if let Some(why) = rel_path_problem(path) {
                    return Err(bad(n, format!("entry {path:?}: {why}")));
                }
                let hash =
                    Hash::from_hex(f[1]).ok_or_else(|| bad(n, format!("entry {path:?}: bad hash {:?}", f[1])))?;
                let size: u64 = f[2]
                    .parse()
                    .map_err(|_| bad(n, format!("entry {path:?}: bad size {:?}", f[2])))?;
                let executable = match f[3] {
                    "x" => true,
                    "-" => false,
                    o => return Err(bad(n, format!("entry {path:?}: bad mode flag {o:?}"))),
                };
                let e = Entry { hash, size, executable };
                if entries.insert(path.to_string(), e).is_some() {
                    return Err(bad(n, format!("entry {path:?}: duplicate")));
                }
            }
        }
        let t = Tree { entries };
        if t.canonical_bytes() != bytes {
            return Err(bad(
                0,
                "not in canonical form (order, hex case or number format)".into(),
            ));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Tree {
        let mut t = Tree::default();
        t.entries.insert(
            "bin/run.sh".into(),
            Entry {
                hash: Hash::of_bytes(b"#!/bin/sh\n"),
                size: 10,
                executable: true,
            },
        );
        t.entries.insert(
            "a.txt".into(),
            Entry {
                hash: Hash::of_bytes(b"hello"),
                size: 5,
                executable: false,
            },
        );
        t
    }

    #[test]
    fn canonical_encoding_golden() {
        let t = sample();
        let expected = format!(
            "flow-tree-v1\na.txt\0{}\x005\0-\nbin/run.sh\0{}\x0010\0x\n",
            Hash::of_bytes(b"hello").to_hex(),
            Hash::of_bytes(b"#!/bin/sh\n").to_hex()
        );
        assert_eq!(String::from_utf8(t.canonical_bytes()).unwrap(), expected);
        // Pinned: changing the encoding changes every cache key downstream.
        assert_eq!(
            t.hash().to_hex(),
            "d060ea7035b8670ce251ec533ef809adc888a708ff646803856078a3e8b262a3"
        );
        assert_eq!(
            Tree::default().hash().to_hex(),
            "8e8ed2eb543f374f6de9f18d92fe85989bac85f8a425ef852880d9c59477676d"
        );
        assert_eq!(t.total_size(), 15);
    }

    #[test]
    fn parse_round_trip_and_strictness() {
        let t = sample();
        let b = t.canonical_bytes();
        assert_eq!(Tree::parse(&b).unwrap(), t);
        assert_eq!(Tree::parse(HEADER.as_bytes()).unwrap(), Tree::default());
        // Truncated.
        assert!(Tree::parse(&b[..b.len() - 1]).is_err());
        // Wrong header.
        assert!(Tree::parse(b"flow-tree-v2\n").is_err());
        // Out of order.
        let s = String::from_utf8(b.clone()).unwrap();
        let mut lines: Vec<&str> = s.lines().collect();
        lines.swap(1, 2);
        let swapped = lines.join("\n") + "\n";
        assert!(Tree::parse(swapped.as_bytes()).is_err());
        // Upper-case hex.
        let upper = s.replace(
            &Hash::of_bytes(b"hello").to_hex(),
            &Hash::of_bytes(b"hello").to_hex().to_uppercase(),
        );
        assert!(Tree::parse(upper.as_bytes()).is_err());
        // Leading zero in size.
        assert!(Tree::parse(s.replace("\x005\0", "\x0005\0").as_bytes()).is_err());
        // Escaping path.
        let esc = s.replace("a.txt", "../a.txt");
        let err = Tree::parse(esc.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("../a.txt"), "{err}");
    }

    #[test]
    fn rel_paths() {
        assert!(valid_rel_path("a/b.c"));
        for bad in ["", "/a", "a//b", "./a", "a/..", "a/", "a\nb"] {
            assert!(!valid_rel_path(bad), "{bad:?}");
        }
    }
}
