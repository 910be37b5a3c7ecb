//! Run records (`runs/<key>.json`) and named metadata (`meta/<name>.json`): pretty JSON,
//! written atomically (tmp file, fsync, rename, fsync of the directory).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{CacheError, IoCtx, Result};
use crate::fsutil::sync_dir;
use crate::store::Store;

/// Record keys and meta names: no empty or `.`-leading components, no NUL/newline/backslash.
fn check_name(dir: &Path, name: &str, allow_slash: bool) -> Result<()> {
    let bad = |what| {
        Err(CacheError::InvalidName {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            what,
        })
    };
    if name.contains(['\0', '\n', '\\']) {
        return bad("contains NUL, newline or backslash");
    }
    if !allow_slash && name.contains('/') {
        return bad("contains '/'");
    }
    for c in name.split('/') {
        if c.is_empty() {
            return bad("empty name or path component");
        }
        if c.starts_with('.') {
            return bad("a name or component starts with '.'");
        }
    }
    Ok(())
}

impl Store {
    /// Write `bytes` to `dest` atomically: a tmp file in `tmp/`, fsync, rename over `dest`,
    /// fsync of `dest`'s directory.
    pub fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        self.write_atomic_parts(dest, &[bytes])
    }

    /// [`Store::write_atomic`] of the concatenation of `parts`.
    pub fn write_atomic_parts(&self, dest: &Path, parts: &[&[u8]]) -> Result<()> {
        self.write_replace(dest, parts, true)
    }

    /// Write `parts` to a tmp file and rename it over `dest`. With `durable`, the file is
    /// fsynced before the rename and the directory after it; without, readers still never see
    /// a partial file, but after a crash `dest` may be old, empty or torn (fine for a file
    /// that carries its own checksum).
    pub(crate) fn write_replace(&self, dest: &Path, parts: &[&[u8]], durable: bool) -> Result<()> {
        let tmp = self.tmp_file_path("write");
        let r = (|| {
            let mut f = File::create_new(&tmp).ctx("create", &tmp)?;
            for part in parts {
                f.write_all(part).ctx("write", &tmp)?;
            }
            if durable {
                f.sync_all().ctx("sync", &tmp)?;
            }
            fs::rename(&tmp, dest).map_err(|e| CacheError::rename(&tmp, dest, e))
        })();
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r?;
        if durable {
            sync_dir(dest.parent().expect("destination has a parent"))?;
        }
        Ok(())
    }

    fn write_json<T: Serialize>(&self, dest: &Path, v: &T) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(v).map_err(|err| CacheError::Encode {
            path: dest.to_path_buf(),
            err,
        })?;
        bytes.push(b'\n');
        self.write_atomic(dest, &bytes)
    }

    fn read_json<T: DeserializeOwned>(&self, path: &Path) -> Result<Option<T>> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CacheError::io("read", path, e)),
        };
        match serde_json::from_slice(&bytes) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                tracing::warn!("ignoring unreadable record {}: {e}", path.display());
                Ok(None)
            }
        }
    }

    /// `root/runs/<key>.json`.
    pub fn record_path(&self, key: &str) -> PathBuf {
        self.dir("runs").join(format!("{key}.json"))
    }

    /// Write the run record for `key` (pretty JSON, atomic and durable).
    pub fn write_record<T: Serialize>(&self, key: &str, rec: &T) -> Result<()> {
        check_name(&self.dir("runs"), key, false)?;
        self.write_json(&self.record_path(key), rec)
    }

    /// The run record for `key`: `Ok(None)` if absent, or if it does not parse as `T`
    /// (a half-written or foreign record is never trusted; a warning is logged).
    pub fn read_record<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        check_name(&self.dir("runs"), key, false)?;
        self.read_json(&self.record_path(key))
    }

    /// Keys of all run records, sorted.
    pub fn record_keys(&self) -> Result<Vec<String>> {
        let runs = self.dir("runs");
        let mut keys = Vec::new();
        for e in fs::read_dir(&runs).ctx("list", &runs)? {
            let e = e.ctx("list", &runs)?;
            if let Some(k) = e.file_name().to_str().and_then(|n| n.strip_suffix(".json")) {
                if check_name(&runs, k, false).is_ok() {
                    keys.push(k.to_string());
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Remove the run record for `key` (absent is fine).
    pub fn remove_record(&self, key: &str) -> Result<()> {
        check_name(&self.dir("runs"), key, false)?;
        let p = self.record_path(key);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(CacheError::io("remove", &p, e)),
            _ => Ok(()),
        }
    }

    /// `root/meta/<name>.json`; `name` may contain `/` (subdirectories).
    pub fn meta_path(&self, name: &str) -> PathBuf {
        self.dir("meta").join(format!("{name}.json"))
    }

    /// Write `meta/<name>.json` atomically, creating subdirectories for `/` in `name`.
    pub fn write_meta<T: Serialize>(&self, name: &str, v: &T) -> Result<()> {
        check_name(&self.dir("meta"), name, true)?;
        let p = self.meta_path(name);
        let parent = p.parent().expect("meta path has a parent");
        fs::create_dir_all(parent).ctx("create", parent)?;
        self.write_json(&p, v)
    }

    /// [`Store::write_meta`] without the fsyncs: readers never see a partial file, but after
    /// a crash the file may be old or missing (for hints that can be rebuilt or done without).
    pub fn write_meta_nosync<T: Serialize>(&self, name: &str, v: &T) -> Result<()> {
        check_name(&self.dir("meta"), name, true)?;
        let p = self.meta_path(name);
        let parent = p.parent().expect("meta path has a parent");
        fs::create_dir_all(parent).ctx("create", parent)?;
        let mut bytes = serde_json::to_vec_pretty(v).map_err(|err| CacheError::Encode { path: p.clone(), err })?;
        bytes.push(b'\n');
        self.write_replace(&p, &[&bytes], false)
    }

    /// Remove `meta/<name>.json` and, if it exists, the directory `meta/<name>/` with
    /// everything in it (absent is fine).
    pub fn remove_meta(&self, name: &str) -> Result<()> {
        check_name(&self.dir("meta"), name, true)?;
        let p = self.meta_path(name);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(CacheError::io("remove", &p, e)),
            _ => {}
        }
        crate::fsutil::remove_tree(&self.dir("meta").join(name))
    }

    /// Read `meta/<name>.json`; `Ok(None)` if absent or unparsable (with a warning).
    pub fn read_meta<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        check_name(&self.dir("meta"), name, true)?;
        self.read_json(&self.meta_path(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rec {
        key: String,
        outputs: Vec<crate::Hash>,
        secs: f64,
    }

    fn rec() -> Rec {
        Rec {
            key: "k1".into(),
            outputs: vec![crate::Hash::of_bytes(b"o")],
            secs: 1.5,
        }
    }

    #[test]
    fn record_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.read_record::<Rec>("k1").unwrap(), None);
        s.write_record("k1", &rec()).unwrap();
        assert_eq!(s.read_record::<Rec>("k1").unwrap(), Some(rec()));
        assert_eq!(s.record_keys().unwrap(), vec!["k1".to_string()]);
        let text = fs::read_to_string(s.record_path("k1")).unwrap();
        assert!(text.contains("\n  \"key\": \"k1\""), "pretty JSON: {text}");
        // No tmp files left behind.
        assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
        assert!(s.write_record("../x", &rec()).is_err());
        assert!(s.write_record("a/b", &rec()).is_err());
    }

    #[test]
    fn truncated_record_reads_as_none() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        s.write_record("k1", &rec()).unwrap();
        let p = s.record_path("k1");
        let full = fs::read(&p).unwrap();
        fs::write(&p, &full[..full.len() / 2]).unwrap();
        assert_eq!(s.read_record::<Rec>("k1").unwrap(), None);
        // A later write repairs it.
        s.write_record("k1", &rec()).unwrap();
        assert_eq!(s.read_record::<Rec>("k1").unwrap(), Some(rec()));
    }

    #[test]
    fn meta_with_subdirs() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        s.write_meta("last/pipe/train", &rec()).unwrap();
        assert!(s.root().join("meta/last/pipe/train.json").is_file());
        assert_eq!(s.read_meta::<Rec>("last/pipe/train").unwrap(), Some(rec()));
        assert_eq!(s.read_meta::<Rec>("last/pipe/other").unwrap(), None);
        let e = s.write_meta("a/../b", &rec()).unwrap_err().to_string();
        assert!(e.contains("meta"), "{e}");
    }
}
