//! Scratch directories under `tmp/` owned by a process, and reclaiming those of dead owners.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{CacheError, IoCtx, Result};
use crate::fsutil::{host_tag, hostname, pid_alive, remove_tree};
use crate::store::{next_counter, Store};

const MARKER: &str = ".owner.pid";

/// A directory `root/tmp/<label>.<pid>.<counter>` with a marker file
/// `root/tmp/<label>.<pid>.<counter>.owner.pid` beside it (the directory's content belongs to
/// whoever writes there). Dropping it removes both, best effort, unless [`TmpDir::keep`] was
/// called; a kept directory is still reclaimed by [`Store::clean_stale_tmp`] once its owner
/// process is dead.
#[derive(Debug)]
pub struct TmpDir {
    path: PathBuf,
    marker: PathBuf,
    kept: AtomicBool,
}

impl TmpDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Do not remove the directory on drop; returns its path.
    pub fn keep(&self) -> PathBuf {
        self.kept.store(true, Ordering::Relaxed);
        self.path.clone()
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if self.kept.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = remove_tree(&self.path) {
            tracing::warn!("{e}");
        }
        let _ = fs::remove_file(&self.marker);
    }
}

/// Owner of a marker: pid, and whether it was written on this host.
fn read_marker(p: &Path) -> Option<(u32, bool)> {
    let s = fs::read_to_string(p).ok()?;
    let mut lines = s.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let same_host = lines.next().is_none_or(|h| h == hostname());
    Some((pid, same_host))
}

/// The pid in `<label>.<pid>.<counter>`.
fn pid_from_dir_name(name: &str) -> Option<u32> {
    let mut it = name.rsplitn(3, '.');
    let counter = it.next()?;
    let pid = it.next()?;
    it.next()?;
    counter.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Pid and host tag in `<kind>.<pid>.<counter>.<hosttag>.tmp`.
fn owner_from_file_name(name: &str) -> Option<(u32, &str)> {
    let base = name.strip_suffix(".tmp")?;
    let (rest, tag) = base.rsplit_once('.')?;
    Some((pid_from_dir_name(rest)?, tag))
}

impl Store {
    /// Create `root/tmp/<label>.<pid>.<counter>` and its owner marker. `label` must be a plain
    /// name (no `/`, not starting with `.`).
    pub fn new_tmp_dir(&self, label: &str) -> Result<TmpDir> {
        let tmp = self.dir("tmp");
        if label.is_empty() || label.starts_with('.') || label.contains(['/', '\0', '\n']) {
            return Err(CacheError::InvalidName {
                dir: tmp,
                name: label.to_string(),
                what: "tmp label must be a plain file name",
            });
        }
        let pid = std::process::id();
        loop {
            let name = format!("{label}.{pid}.{}", next_counter());
            let path = tmp.join(&name);
            let marker = tmp.join(format!("{name}{MARKER}"));
            // Marker first, so the directory never exists without an owner.
            let mut f = match File::create_new(&marker) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(CacheError::io("create", &marker, e)),
            };
            f.write_all(format!("{pid}\n{}\n", hostname()).as_bytes())
                .ctx("write", &marker)?;
            match fs::create_dir(&path) {
                Ok(()) => {
                    return Ok(TmpDir {
                        path,
                        marker,
                        kept: AtomicBool::new(false),
                    })
                }
                // Left over from an earlier process with our pid: its marker was just
                // replaced by ours; leave it for clean_stale_tmp after we exit.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    let _ = fs::remove_file(&marker);
                    return Err(CacheError::io("create", &path, e));
                }
            }
        }
    }

    /// Remove tmp directories (with their markers) and tmp files whose owner process is no
    /// longer alive on this host (`kill(pid, 0)` fails with `ESRCH`). Entries of other hosts
    /// and entries with no recognisable owner are left alone. Returns how many were removed.
    pub fn clean_stale_tmp(&self) -> Result<usize> {
        let tmp = self.dir("tmp");
        let mut removed = 0;
        for e in fs::read_dir(&tmp).ctx("list", &tmp)? {
            let e = e.ctx("list", &tmp)?;
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let path = e.path();
            if let Some(base) = name.strip_suffix(MARKER) {
                let owner = read_marker(&path).or_else(|| pid_from_dir_name(base).map(|p| (p, true)));
                let Some((pid, true)) = owner else { continue };
                if pid_alive(pid) {
                    continue;
                }
                let dir = tmp.join(base);
                remove_tree(&dir)?;
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(CacheError::io("remove", &path, e)),
                    _ => {}
                }
                removed += 1;
                continue;
            }
            let ft = e.file_type().ctx("stat", &path)?;
            if ft.is_dir() {
                // Handled through its marker (or already removed that way: read_dir may
                // still list it).
                if tmp.join(format!("{name}{MARKER}")).exists() || !path.exists() {
                    continue;
                }
                // Without its marker, a directory is flow's only if it holds nothing but
                // what a stage instance's scratch dir holds (`in/`, `out/`, `work/`).
                let only_scratch = fs::read_dir(&path).is_ok_and(|rd| {
                    rd.flatten()
                        .all(|e| matches!(e.file_name().to_str(), Some("in" | "out" | "work")))
                });
                match pid_from_dir_name(&name) {
                    Some(pid) if !pid_alive(pid) && only_scratch => {
                        remove_tree(&path)?;
                        removed += 1;
                    }
                    _ => {}
                }
            } else {
                match owner_from_file_name(&name) {
                    Some((pid, tag)) if tag == host_tag() && !pid_alive(pid) => match fs::remove_file(&path) {
                        Ok(()) => removed += 1,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(CacheError::io("remove", &path, e)),
                    },
                    _ => {}
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    }

    #[test]
    fn tmp_dir_lifecycle() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let t = s.new_tmp_dir("train").unwrap();
        let p = t.path().to_path_buf();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with(&format!("train.{}.", std::process::id())));
        assert!(p.is_dir());
        let marker = s.root().join("tmp").join(format!("{name}.owner.pid"));
        assert!(marker.is_file());
        assert_eq!(fs::read_dir(&p).unwrap().count(), 0, "marker is beside, not inside");
        fs::create_dir(p.join("ro")).unwrap();
        fs::write(p.join("ro/f"), b"x").unwrap();
        drop(t);
        assert!(!p.exists() && !marker.exists());

        let t = s.new_tmp_dir("keep").unwrap();
        let kept = t.keep();
        drop(t);
        assert!(kept.is_dir());
        assert!(s.new_tmp_dir("a/b").is_err());
    }

    #[test]
    fn clean_stale_tmp_removes_only_dead_owners() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let tmp = s.root().join("tmp");
        let dead = dead_pid();
        assert!(!pid_alive(dead));
        // A dead owner's dir + marker, as new_tmp_dir would have left them.
        let stale = tmp.join(format!("stage.{dead}.7"));
        fs::create_dir_all(stale.join("sub")).unwrap();
        fs::write(stale.join("sub/ckpt"), b"x").unwrap();
        fs::write(
            tmp.join(format!("stage.{dead}.7.owner.pid")),
            format!("{dead}\n{}\n", hostname()),
        )
        .unwrap();
        // A dead owner's loose tmp file.
        fs::write(tmp.join(format!("obj.{dead}.3.{}.tmp", host_tag())), b"y").unwrap();
        // Another host's marker with a "dead" pid: not ours to judge.
        let other = tmp.join(format!("stage.{dead}.8"));
        fs::create_dir(&other).unwrap();
        fs::write(
            tmp.join(format!("stage.{dead}.8.owner.pid")),
            format!("{dead}\nsome-other-host\n"),
        )
        .unwrap();
        // Ours, alive.
        let live = s.new_tmp_dir("stage").unwrap();

        let n = s.clean_stale_tmp().unwrap();
        let left: Vec<_> = fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(n, 2, "left: {left:?}");
        assert!(!stale.exists());
        assert!(!tmp.join(format!("stage.{dead}.7.owner.pid")).exists());
        assert!(other.exists());
        assert!(live.path().is_dir());
        assert_eq!(s.clean_stale_tmp().unwrap(), 0);
    }

    #[test]
    fn name_parsing() {
        assert_eq!(pid_from_dir_name("a.b.12.3"), Some(12));
        assert_eq!(pid_from_dir_name("x.12"), None);
        assert_eq!(owner_from_file_name("obj.5.9.abcd1234.tmp"), Some((5, "abcd1234")));
    }
}
