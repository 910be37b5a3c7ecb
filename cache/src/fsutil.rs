//! Small filesystem helpers: directory walk, parallel map, fsync, pid liveness.

use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::error::{CacheError, IoCtx, Result};
use crate::hash::Hash;
use crate::tree::rel_path_problem;

/// Worker threads for hashing: `available_parallelism`, at least 1.
pub(crate) fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// `items.iter().map(f)`, spread over [`threads`] crossbeam scoped threads; order preserved.
pub(crate) fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let n = threads().min(items.len());
    if n <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let parts: Vec<Vec<(usize, R)>> = crossbeam::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|_| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= items.len() {
                            break;
                        }
                        mine.push((i, f(&items[i])));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
    let mut out: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    for (i, r) in parts.into_iter().flatten() {
        out[i] = Some(r);
    }
    out.into_iter()
        .map(|r| r.expect("par_map: every index is produced once"))
        .collect()
}

/// fsync a directory so that renames into it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).ctx("sync", dir)
}

/// Hash the file at `path` (following symlinks) with blake3; also returns the byte count
/// and the metadata of the opened file taken *before* reading. With `fsync`, the file is
/// fsynced too (before it is renamed into the store).
/// Read `f` to the end through a per-thread buffer (allocating and zeroing a fresh one per
/// file dominated hashing many small files), hashing every byte and passing it to `sink`.
pub(crate) fn read_hashing(
    f: &mut File,
    path: &Path,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<(Hash, u64)> {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 256 * 1024]);
    }
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let mut h = blake3::Hasher::new();
        let mut n = 0u64;
        loop {
            let k = match f.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CacheError::io("read", path, e)),
            };
            h.update(&buf[..k]);
            sink(&buf[..k])?;
            n += k as u64;
        }
        Ok((h.finalize().into(), n))
    })
}

pub(crate) fn hash_file(path: &Path, fsync: bool) -> Result<(Hash, u64, Metadata)> {
    let mut f = File::open(path).ctx("open", path)?;
    let meta = f.metadata().ctx("stat", path)?;
    let (h, n) = read_hashing(&mut f, path, |_| Ok(()))?;
    if fsync {
        f.sync_all().ctx("sync", path)?;
    }
    Ok((h, n, meta))
}

/// Copy `src` (following symlinks) to the new file `dst` (must not exist), hashing the bytes
/// on the way; fsyncs `dst`. Returns hash and size.
pub(crate) fn copy_hashing(src: &Path, dst: &Path) -> Result<(Hash, u64)> {
    let mut inp = File::open(src).ctx("open", src)?;
    let mut out = File::create_new(dst).ctx("create", dst)?;
    let r = read_hashing(&mut inp, src, |b| out.write_all(b).ctx("write", dst))?;
    out.sync_all().ctx("sync", dst)?;
    Ok(r)
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).ctx("chmod", path)
}

/// Whether any exec bit is set.
pub(crate) fn is_executable(meta: &Metadata) -> bool {
    meta.mode() & 0o111 != 0
}

/// `remove_dir_all` (absent is fine), retrying once after making every directory inside writable
/// (stages sometimes leave read-only directories behind).
pub fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    fn unlock(p: &Path) {
        if let Ok(m) = fs::symlink_metadata(p) {
            if m.is_dir() {
                let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
                if let Ok(rd) = fs::read_dir(p) {
                    for e in rd.flatten() {
                        unlock(&e.path());
                    }
                }
            }
        }
    }
    unlock(path);
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(CacheError::io("remove", path, e)),
        _ => Ok(()),
    }
}

/// Whether process `pid` exists on this host (`kill(pid, 0)` does not fail with `ESRCH`).
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 performs only the existence and permission checks.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// This machine's host name (pids are only meaningful on the host that wrote them).
pub(crate) fn hostname() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: buf is valid for buf.len() bytes; gethostname NUL-terminates on success.
        let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if r != 0 {
            return "unknown".to_string();
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    })
}

/// 8 hex characters naming this host, for tmp file names.
pub(crate) fn host_tag() -> &'static str {
    static T: OnceLock<String> = OnceLock::new();
    T.get_or_init(|| Hash::of_bytes(hostname().as_bytes()).to_hex()[..8].to_string())
}

/// The stat data of a walked file that the caches need (a `Metadata` is ~200 bytes; a dataset
/// walk keeps one per file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileStat {
    pub size: u64,
    pub mtime_ns: i64,
    pub ino: u64,
    pub ctime_ns: i64,
    pub mode: u32,
}

impl FileStat {
    pub fn of(m: &Metadata) -> FileStat {
        FileStat {
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ino: m.ino(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            mode: m.mode(),
        }
    }
    pub fn executable(&self) -> bool {
        self.mode & 0o111 != 0
    }
}

/// One file found by [`walk`]. Kept small: a walk over a dataset holds one per file.
pub(crate) struct WalkItem {
    /// Path relative to the walked root, `/`-separated (a [`crate::Tree`] key). The path as
    /// found is `root.join(rel)` (see [`WalkItem::path`]).
    pub rel: String,
    /// Canonical absolute path of the file, when it is not `root_canon/rel` (the file is a
    /// symlink or is reached through one); see [`WalkItem::canon`].
    pub link_canon: Option<PathBuf>,
    /// Stat data of the file (symlinks followed).
    pub stat: FileStat,
    /// The path is itself a symlink.
    pub is_link: bool,
    /// The path is reached through a symlinked directory (it belongs to someone else).
    pub under_link: bool,
}

impl WalkItem {
    /// The path under the walked root as found (may be or pass through a symlink).
    pub fn path(&self, root: &Path) -> PathBuf {
        root.join(&self.rel)
    }
    /// Feeds the canonical absolute path's bytes to `f` without building it when it is
    /// `root_canon/rel`.
    pub fn with_canon<R>(&self, root_canon: &Path, f: impl FnOnce(&[&[u8]]) -> R) -> R {
        use std::os::unix::ffi::OsStrExt;
        match &self.link_canon {
            Some(c) => f(&[c.as_os_str().as_bytes()]),
            None => {
                let root = root_canon.as_os_str().as_bytes();
                let sep: &[u8] = if root.ends_with(b"/") { b"" } else { b"/" };
                f(&[root, sep, self.rel.as_bytes()])
            }
        }
    }
}

/// Every file under `root` (whose canonical path is `root_canon`), directories visited in
/// sorted name order. Symlinks are followed, to files and to directories; a link back to an
/// ancestor, a dangling link, a non-UTF-8 name, a name with a newline or a special file is
/// an error naming the path. Empty directories contribute nothing.
pub(crate) fn walk(root: &Path, root_canon: &Path) -> Result<Vec<WalkItem>> {
    let meta = fs::metadata(root).ctx("stat", root)?;
    let mut out = Vec::new();
    let mut ancestors = vec![(meta.dev(), meta.ino())];
    walk_dir(root, root_canon, "", false, &mut ancestors, &mut out)?;
    Ok(out)
}

/// Directories with at least this many entries are stat'ed in parallel.
const PAR_STAT_MIN: usize = 256;

fn walk_dir(
    dir: &Path,
    canon: &Path,
    rel: &str,
    under_link: bool,
    ancestors: &mut Vec<(u64, u64)>,
    out: &mut Vec<WalkItem>,
) -> Result<()> {
    let mut ents: Vec<(std::ffi::OsString, fs::DirEntry)> = fs::read_dir(dir)
        .ctx("list", dir)?
        .map(|e| e.map(|e| (e.file_name(), e)))
        .collect::<io::Result<_>>()
        .ctx("list", dir)?;
    ents.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    // Stat a large directory's entries on several threads (the kernel's part of a no-op
    // run over a dataset); symlinks are resolved below, one by one.
    let stats: Vec<Option<io::Result<Metadata>>> = if ents.len() >= PAR_STAT_MIN {
        par_map(&ents, |(_, e)| match e.file_type() {
            Ok(ft) if !ft.is_symlink() => Some(e.metadata()),
            _ => None,
        })
    } else {
        ents.iter().map(|_| None).collect()
    };
    for ((name, e), stat) in ents.into_iter().zip(stats) {
        // Built only when needed: for errors, links and subdirectories.
        let path = || dir.join(&name);
        let name = name
            .to_str()
            .ok_or_else(|| CacheError::unsupported(&path(), "file name is not UTF-8"))?;
        let child_rel = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        if let Some(why) = rel_path_problem(&child_rel) {
            return Err(CacheError::unsupported(&path(), why));
        }
        let ft = e.file_type().map_err(|err| CacheError::io("stat", path(), err))?;
        let is_link = ft.is_symlink();
        let (meta, link_canon) = if is_link {
            let p = path();
            let m = fs::metadata(&p).map_err(|err| match err.kind() {
                io::ErrorKind::NotFound => CacheError::unsupported(&p, "dangling symlink"),
                _ => CacheError::io("follow symlink", &p, err),
            })?;
            (m, Some(fs::canonicalize(&p).ctx("resolve", &p)?))
        } else {
            let m = match stat {
                Some(m) => m,
                None => e.metadata(),
            };
            let m = m.map_err(|err| CacheError::io("stat", path(), err))?;
            (m, under_link.then(|| canon.join(name)))
        };
        if meta.is_file() {
            out.push(WalkItem {
                rel: child_rel,
                link_canon,
                stat: FileStat::of(&meta),
                is_link,
                under_link,
            });
        } else if meta.is_dir() {
            let id = (meta.dev(), meta.ino());
            if ancestors.contains(&id) {
                return Err(CacheError::unsupported(
                    &path(),
                    "symlink loop (links back to an enclosing directory)",
                ));
            }
            ancestors.push(id);
            let child_canon = link_canon.unwrap_or_else(|| canon.join(name));
            walk_dir(&path(), &child_canon, &child_rel, under_link || is_link, ancestors, out)?;
            ancestors.pop();
        } else {
            return Err(CacheError::unsupported(
                &path(),
                "not a regular file, directory or symlink (fifo, socket or device?)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn par_map_keeps_order() {
        let v: Vec<u32> = (0..1000).collect();
        let r = par_map(&v, |x| x * 2);
        assert_eq!(r, v.iter().map(|x| x * 2).collect::<Vec<_>>());
    }

    #[test]
    fn pid_liveness() {
        assert!(pid_alive(std::process::id()));
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        assert!(!pid_alive(pid));
        assert!(!pid_alive(0));
    }

    #[test]
    fn walk_rejects_loops_and_dangling_links() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("r");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("sub/f"), b"x").unwrap();
        std::os::unix::fs::symlink(&root, root.join("sub/loop")).unwrap();
        let canon = fs::canonicalize(&root).unwrap();
        let e = walk(&root, &canon).err().unwrap().to_string();
        assert!(e.contains("symlink loop") && e.contains("sub/loop"), "{e}");
        fs::remove_file(root.join("sub/loop")).unwrap();
        std::os::unix::fs::symlink(root.join("nope"), root.join("dangle")).unwrap();
        let e = walk(&root, &canon).err().unwrap().to_string();
        assert!(e.contains("dangling") && e.contains("dangle"), "{e}");
    }
}
