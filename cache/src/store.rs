//! [`Store`]: the content-addressed object store under a cache root (e.g. `<workspace>/.flow`).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::error::{CacheError, IoCtx, Result};
use crate::fsutil::{self, copy_hashing, hash_file, is_executable, par_map, set_mode, sync_dir};
use crate::hash::Hash;
use crate::tree::{rel_path_problem, Entry, Tree};

/// The subdirectories [`Store::open`] creates.
pub const SUBDIRS: [&str; 6] = ["objects", "runs", "state", "tmp", "logs", "meta"];

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) fn next_counter() -> u64 {
    TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// The file that marks a directory as a flow cache: a Cache Directory Tag
/// (<https://bford.info/cachedir/>), so backup tools skip it too.
pub const CACHE_TAG: &str = "CACHEDIR.TAG";
const CACHE_TAG_TEXT: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by flow (https://bford.info/cachedir/).\n";

/// `root` is absent, empty, tagged, or a flow cache from before the tag; else an error.
fn check_is_cache(root: &Path) -> Result<()> {
    let mut entries = match fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            return Err(CacheError::NotACache {
                path: root.to_path_buf(),
                what: "it is a file".into(),
            })
        }
        Err(e) => return Err(CacheError::io("list", root, e)),
    };
    if entries.next().is_none() || root.join(CACHE_TAG).is_file() {
        return Ok(());
    }
    // A cache from before the tag has every subdirectory flow makes; a folder of the user's
    // that happens to hold `objects/` and `runs/` is not one.
    if SUBDIRS.iter().all(|d| root.join(d).is_dir()) {
        return Ok(());
    }
    Err(CacheError::NotACache {
        path: root.to_path_buf(),
        what: format!("it holds other files and no {CACHE_TAG}"),
    })
}

/// Whether `name` has the shape of a key or object hash (64 lowercase hex characters): the
/// only names flow gives to records, logs, checkpoints and quarantined objects, and so the
/// only ones its clean-ups remove.
pub fn is_key_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A cache root: `objects/` (immutable blobs named by blake3, mode 0444), `runs/` (run
/// records), `meta/`, `state/` (file-state cache), `tmp/`, `logs/` and the `lock` file.
/// Cheap to share between threads (`&Store` is all any method needs).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// How [`Store::materialize`] creates files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Materialize {
    /// An absolute symlink to the (read-only) object. The exec bit is not carried.
    Symlink,
    /// A regular, writable copy (0644, or 0755 for executable entries, less the umask).
    Copy,
    /// A hard link to the (read-only) object, or a symlink where a hard link is impossible
    /// (another file system). Unlike a symlink, the path keeps its own name when opened, so a
    /// browser shows `report/index.html` as HTML (Chromium takes the MIME type from the
    /// symlink's target, an extension-less object name).
    Link,
}

/// Something wrong with one entry of a tree, found by [`Store::check_tree`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The tree entry's relative path.
    pub path: String,
    pub hash: Hash,
    /// e.g. "object missing", "size 10 != recorded 12".
    pub what: String,
}

/// Result of [`Store::verify_all`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Objects looked at.
    pub checked: usize,
    /// Objects whose content does not hash to their name (sorted).
    pub corrupt: Vec<Hash>,
    /// Objects that could not be read, with the error (sorted).
    pub unreadable: Vec<(Hash, String)>,
}

/// Result of moving or copying one file into the store.
struct Put {
    entry: Entry,
    /// A new object was renamed into place (its shard directory needs an fsync).
    new: bool,
}

impl Store {
    /// Open (creating if needed) the cache at `root` and its subdirectories; the root is made
    /// absolute. Fails with the offending path if anything cannot be created or written.
    ///
    /// An existing directory must be a flow cache (it has the [`CACHE_TAG`] file, or is a cache
    /// from before the tag: `objects/` and `runs/`) or be empty: `--cache-dir data` must never
    /// make a user's directory a cache that `flow gc` then empties.
    pub fn open(root: &Path) -> Result<Store> {
        check_is_cache(root)?;
        fs::create_dir_all(root).ctx("create", root)?;
        let abs = fs::canonicalize(root).ctx("resolve", root)?;
        for d in SUBDIRS {
            let p = abs.join(d);
            fs::create_dir_all(&p).ctx("create", &p)?;
        }
        let store = Store { root: abs };
        let probe = store.tmp_file_path("probe");
        File::create_new(&probe).ctx("write", &probe)?;
        fs::remove_file(&probe).ctx("remove", &probe)?;
        let tag = store.root.join(CACHE_TAG);
        if !tag.exists() {
            store.write_replace(&tag, &[CACHE_TAG_TEXT.as_bytes()], false)?;
        }
        Ok(store)
    }

    /// The cache at `root` for reading only (`flow status`, `flow verify` of a read-only
    /// cache): nothing is created or written. A missing root is an empty cache (every lookup
    /// finds nothing); a relative root is made absolute.
    pub fn open_read_only(root: &Path) -> Result<Store> {
        check_is_cache(root)?;
        let abs = match fs::canonicalize(root) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::path::absolute(root).ctx("resolve", root)?,
            Err(e) => return Err(CacheError::io("resolve", root, e)),
        };
        Ok(Store { root: abs })
    }

    /// The (absolute) cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn dir(&self, sub: &str) -> PathBuf {
        self.root.join(sub)
    }

    /// A fresh file name in `tmp/`: `<kind>.<pid>.<counter>.<hosttag>.tmp`.
    pub(crate) fn tmp_file_path(&self, kind: &str) -> PathBuf {
        self.dir("tmp").join(format!(
            "{kind}.{}.{}.{}.tmp",
            std::process::id(),
            next_counter(),
            fsutil::host_tag()
        ))
    }

    /// `root/objects/ab/cdef…` (first two hex characters as the directory).
    pub fn object_path(&self, h: &Hash) -> PathBuf {
        let hex = h.to_hex();
        self.root.join("objects").join(&hex[..2]).join(&hex[2..])
    }

    /// Whether the object file exists (no content check).
    pub fn has_object(&self, h: &Hash) -> bool {
        fs::symlink_metadata(self.object_path(h)).is_ok()
    }

    /// Rename the finished, fsynced, read-only file `tmp` to the object path of `h`
    /// (removing `tmp` instead if the object already exists). Returns whether it was new.
    fn publish_tmp(&self, tmp: &Path, h: &Hash, size: u64) -> Result<bool> {
        let dest = self.object_path(h);
        if self.keep_existing(h, size) {
            fs::remove_file(tmp).ctx("remove", tmp)?;
            return Ok(false);
        }
        let r = (|| {
            set_mode(tmp, 0o444)?;
            let shard = dest.parent().expect("object path has a parent");
            fs::create_dir_all(shard).ctx("create", shard)?;
            fs::rename(tmp, &dest).map_err(|e| CacheError::rename(tmp, &dest, e))
        })();
        if r.is_err() {
            let _ = fs::remove_file(tmp);
        }
        r.map(|()| true)
    }

    /// Whether the object `h` already exists intact (a regular file of `size` bytes whose
    /// content hashes to `h`), so that publishing the same content again can keep it. A
    /// damaged one (edited in place through an `out/` hard link, truncated, bit rot) is
    /// not trusted: it is moved to `quarantine/` (kept for a look), and `false` tells the
    /// caller to publish the fresh bytes in its place. Re-hashing costs one read of content
    /// the stage has just produced again; it happens only when a re-made output is already
    /// in the cache.
    fn keep_existing(&self, h: &Hash, size: u64) -> bool {
        let dest = self.object_path(h);
        let problem = match fs::symlink_metadata(&dest) {
            Err(_) => return false,
            Ok(m) if !m.is_file() => "not a regular file".to_string(),
            Ok(m) if m.len() != size => format!("{} bytes, not {size}", m.len()),
            Ok(_) => match hash_file(&dest, false) {
                Ok((got, _, _)) if got == *h => return true,
                Ok((got, _, _)) => format!("its content hashes to {}", got.short()),
                Err(e) => e.to_string(),
            },
        };
        let q = self.dir("quarantine");
        let aside = q.join(format!("{}.{}.{}", h.to_hex(), std::process::id(), next_counter()));
        let moved = fs::create_dir_all(&q).is_ok() && fs::rename(&dest, &aside).is_ok();
        if !moved {
            // The fresh bytes are renamed over it all the same.
            let _ = fs::remove_file(&dest);
        }
        tracing::warn!(
            "cached object {} was damaged ({problem}); replaced by the re-made bytes{}",
            h.short(),
            if moved {
                " (the damaged copy is in quarantine/)"
            } else {
                ""
            }
        );
        false
    }

    fn sync_shard(&self, h: &Hash) -> Result<()> {
        let p = self.object_path(h);
        sync_dir(p.parent().expect("object path has a parent"))?;
        sync_dir(&self.dir("objects"))
    }

    /// Store `data`; returns its hash. Atomic (tmp file in `tmp/`, fsync, rename); the object is
    /// read-only (0444). A no-op if the object is already present.
    pub fn put_bytes(&self, data: &[u8]) -> Result<Hash> {
        let h = Hash::of_bytes(data);
        if self.keep_existing(&h, data.len() as u64) {
            return Ok(h);
        }
        let tmp = self.tmp_file_path("obj");
        let written = (|| {
            let mut f = File::create_new(&tmp).ctx("create", &tmp)?;
            io::Write::write_all(&mut f, data).ctx("write", &tmp)?;
            f.sync_all().ctx("sync", &tmp)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if self.publish_tmp(&tmp, &h, data.len() as u64)? {
            self.sync_shard(&h)?;
        }
        Ok(h)
    }

    /// Copy the content of `src` (symlinks followed) into the store; `src` is untouched.
    fn copy_in(&self, src: &Path) -> Result<Put> {
        let meta = fs::metadata(src).ctx("stat", src)?;
        let tmp = self.tmp_file_path("obj");
        let (hash, size) = match copy_hashing(src, &tmp) {
            Ok(x) => x,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let new = self.publish_tmp(&tmp, &hash, size)?;
        Ok(Put {
            entry: Entry {
                hash,
                size,
                executable: is_executable(&meta),
            },
            new,
        })
    }

    /// Move the regular file `path` into the store (see [`Store::put_file_move`]); no dir fsync.
    fn move_in(&self, path: &Path) -> Result<Put> {
        let lmeta = fs::symlink_metadata(path).ctx("stat", path)?;
        if lmeta.file_type().is_symlink() {
            let put = self.copy_in(path)?;
            fs::remove_file(path).ctx("remove", path)?;
            return Ok(put);
        }
        if !lmeta.is_file() {
            return Err(CacheError::unsupported(path, "not a regular file"));
        }
        let (hash, size, meta) = hash_file(path, true)?;
        let entry = Entry {
            hash,
            size,
            executable: is_executable(&meta),
        };
        let dest = self.object_path(&hash);
        if self.keep_existing(&hash, size) {
            fs::remove_file(path).ctx("remove", path)?;
            return Ok(Put { entry, new: false });
        }
        if meta.nlink() > 1 {
            // Another name shares this inode: renaming it into the store (and making it
            // read-only) would let that other name alter or chmod an object. Copy instead.
            let put = self.copy_in(path)?;
            fs::remove_file(path).ctx("remove", path)?;
            return Ok(Put {
                entry: Entry {
                    executable: entry.executable,
                    ..put.entry
                },
                new: put.new,
            });
        }
        let shard = dest.parent().expect("object path has a parent");
        fs::create_dir_all(shard).ctx("create", shard)?;
        match fs::rename(path, &dest) {
            Ok(()) => {
                set_mode(&dest, 0o444)?;
                Ok(Put { entry, new: true })
            }
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let put = self.copy_in(path)?;
                fs::remove_file(path).ctx("remove", path)?;
                Ok(put)
            }
            Err(e) => Err(CacheError::rename(path, &dest, e)),
        }
    }

    /// Hash the file at `path`, fsync it and rename it into `objects/` (copying instead when
    /// the rename fails with `EXDEV`, when the file has other hard links, or when `path` is a
    /// symlink: then the target's content is copied and only the link is removed); the object
    /// is made read-only. If the object already exists, `path` is just removed. Either way
    /// `path` is gone afterwards. `executable` comes from the file's mode bits.
    pub fn put_file_move(&self, path: &Path) -> Result<Entry> {
        let put = self.move_in(path)?;
        if put.new {
            self.sync_shard(&put.entry.hash)?;
        }
        Ok(put.entry)
    }

    /// Copy the file at `path` (symlinks followed) into the store, leaving it in place.
    pub fn put_file_copy(&self, path: &Path) -> Result<Entry> {
        let put = self.copy_in(path)?;
        if put.new {
            self.sync_shard(&put.entry.hash)?;
        }
        Ok(put.entry)
    }

    /// Read a whole object, checking that its content hashes to `h`.
    pub fn read_object(&self, h: &Hash) -> Result<Vec<u8>> {
        let p = self.object_path(h);
        let data = fs::read(&p).ctx("read", &p)?;
        let got = Hash::of_bytes(&data);
        if got != *h {
            return Err(CacheError::Corrupt {
                path: p,
                what: format!("content hashes to {got}, not to the object's name"),
            });
        }
        Ok(data)
    }

    /// Move every file under `dir` into the store and return the tree of their relative paths.
    /// Files are hashed in parallel. Symlinks are followed (to files and directories): a
    /// symlinked file's target content is copied in and the link removed; files reached
    /// through a symlinked directory are copied and left alone. Regular files are moved
    /// ([`Store::put_file_move`]). Empty directories are ignored and directories are left in
    /// place. Dangling links, link loops, special files and names that are not UTF-8 or
    /// contain a newline are errors.
    pub fn ingest_dir(&self, dir: &Path) -> Result<Tree> {
        let canon = fs::canonicalize(dir).ctx("resolve", dir)?;
        let items = fsutil::walk(dir, &canon)?;
        let (linked, plain): (Vec<_>, Vec<_>) = items.iter().partition(|i| i.is_link || i.under_link);
        // Copy linked content first: a link may point at a plain file of `dir` that the
        // second phase moves away.
        let mut puts = par_map(&linked, |i| self.copy_in(&i.path(dir)));
        puts.extend(par_map(&plain, |i| self.move_in(&i.path(dir))));
        let mut tree = Tree::default();
        let mut new_shards = BTreeSet::new();
        let mut first_err = None;
        for (item, put) in linked.iter().chain(plain.iter()).zip(puts) {
            match put {
                Ok(p) => {
                    if p.new {
                        new_shards.insert(p.entry.hash.0[0]);
                    }
                    tree.entries.insert(item.rel.clone(), p.entry);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        for &b in &new_shards {
            sync_dir(&self.dir("objects").join(format!("{b:02x}")))?;
        }
        if !new_shards.is_empty() {
            sync_dir(&self.dir("objects"))?;
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        for i in linked.iter().filter(|i| i.is_link && !i.under_link) {
            let p = i.path(dir);
            fs::remove_file(&p).ctx("remove", &p)?;
        }
        Ok(tree)
    }

    /// Store `t.canonical_bytes()` as an object; returns `t.hash()`.
    pub fn put_tree(&self, t: &Tree) -> Result<Hash> {
        self.put_bytes(&t.canonical_bytes())
    }

    /// Read and parse a tree stored with [`Store::put_tree`].
    pub fn get_tree(&self, h: &Hash) -> Result<Tree> {
        let data = self.read_object(h)?;
        Tree::parse(&data).map_err(|e| CacheError::Corrupt {
            path: self.object_path(h),
            what: e.to_string(),
        })
    }

    /// Cheap freshness check: every object of `t` exists with the recorded size (stat only).
    pub fn check_tree(&self, t: &Tree) -> Vec<Problem> {
        self.check_tree_stamped(t, &Default::default()).0
    }

    /// The modification time of object `h` in nanoseconds, or `None` if it is absent. Objects
    /// are never written after publishing, so a later, different value means someone wrote
    /// into one (through an `out/` hard link, as root).
    pub fn object_mtime(&self, h: &Hash) -> Option<i64> {
        let m = fs::metadata(self.object_path(h)).ok()?;
        Some(m.mtime() * 1_000_000_000 + m.mtime_nsec())
    }

    /// [`Store::check_tree`], plus: an entry whose object's modification time differs from
    /// the one recorded in `mtimes` (what [`Store::object_mtime`] said at publishing) was
    /// possibly written after it was cached, so it is re-hashed — a problem unless its bytes
    /// still match. Returns the problems and, for entries re-hashed intact (a cache copied
    /// without its mtimes, a `touch`), their new mtimes, to record.
    pub fn check_tree_stamped(
        &self,
        t: &Tree,
        mtimes: &std::collections::BTreeMap<String, i64>,
    ) -> (Vec<Problem>, std::collections::BTreeMap<String, i64>) {
        let mut problems = Vec::new();
        let mut restamped = std::collections::BTreeMap::new();
        for (path, e) in &t.entries {
            // One stat per object: the size check of `check_tree` and the mtime.
            let m = match fs::metadata(self.object_path(&e.hash)) {
                Ok(m) => m,
                Err(err) => {
                    let what = if err.kind() == io::ErrorKind::NotFound {
                        "object missing".to_string()
                    } else {
                        format!("cannot stat object: {err}")
                    };
                    problems.push(Problem {
                        path: path.clone(),
                        hash: e.hash,
                        what,
                    });
                    continue;
                }
            };
            let what = if !m.is_file() {
                Some("object is not a regular file".to_string())
            } else if m.len() != e.size {
                Some(format!("size {} != recorded {}", m.len(), e.size))
            } else {
                None
            };
            if let Some(what) = what {
                problems.push(Problem {
                    path: path.clone(),
                    hash: e.hash,
                    what,
                });
                continue;
            }
            let now = m.mtime() * 1_000_000_000 + m.mtime_nsec();
            if mtimes.get(path).is_none_or(|want| *want == now) {
                continue;
            }
            match hash_file(&self.object_path(&e.hash), false) {
                Ok((got, _, _)) if got == e.hash => {
                    restamped.insert(path.clone(), now);
                }
                _ => problems.push(Problem {
                    path: path.clone(),
                    hash: e.hash,
                    what: "written after it was cached (its bytes changed)".into(),
                }),
            }
        }
        (problems, restamped)
    }

    /// Whether `path` is one of this store's objects under another name: a hard link to it
    /// (same file system and inode) or a symlink at it — what `out/` views are made of. A
    /// regular file is hashed to find which object it would be.
    pub fn is_object_link(&self, path: &Path) -> bool {
        let Ok(lm) = fs::symlink_metadata(path) else {
            return false;
        };
        if lm.file_type().is_symlink() {
            let objects = self.dir("objects");
            return fs::read_link(path).is_ok_and(|t| t.starts_with(&objects) && t.is_file());
        }
        if !lm.is_file() || lm.nlink() < 2 {
            return false;
        }
        match hash_file(path, false) {
            Ok((h, _, _)) => {
                fs::metadata(self.object_path(&h)).is_ok_and(|om| om.ino() == lm.ino() && om.dev() == lm.dev())
            }
            Err(_) => false,
        }
    }

    /// Create `dest/<path>` for every entry of `t` (parent directories as needed), as an
    /// absolute symlink to the object or as a writable copy. An existing `dest/<path>` is an
    /// error ([`CacheError::Exists`]); so is a missing object.
    pub fn materialize(&self, t: &Tree, dest: &Path, how: Materialize) -> Result<()> {
        for (rel, e) in &t.entries {
            if let Some(why) = rel_path_problem(rel) {
                return Err(CacheError::InvalidName {
                    dir: dest.to_path_buf(),
                    name: rel.clone(),
                    what: why,
                });
            }
            let target = dest.join(rel);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).ctx("create", parent)?;
            }
            let obj = self.object_path(&e.hash);
            let exists = |err: io::Error, op: &'static str, p: &Path| {
                if err.kind() == io::ErrorKind::AlreadyExists {
                    CacheError::Exists { path: p.to_path_buf() }
                } else {
                    CacheError::io(op, p, err)
                }
            };
            match how {
                Materialize::Symlink => {
                    fs::metadata(&obj).ctx("find object", &obj)?;
                    std::os::unix::fs::symlink(&obj, &target).map_err(|err| exists(err, "create symlink", &target))?;
                }
                Materialize::Link => {
                    fs::metadata(&obj).ctx("find object", &obj)?;
                    if let Err(err) = fs::hard_link(&obj, &target) {
                        if err.kind() == io::ErrorKind::AlreadyExists {
                            return Err(exists(err, "link", &target));
                        }
                        std::os::unix::fs::symlink(&obj, &target)
                            .map_err(|err| exists(err, "create symlink", &target))?;
                    }
                }
                Materialize::Copy => {
                    let mut src = File::open(&obj).ctx("read", &obj)?;
                    let mut out = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(if e.executable { 0o755 } else { 0o644 })
                        .open(&target)
                        .map_err(|err| exists(err, "create", &target))?;
                    io::copy(&mut src, &mut out).ctx("write", &target)?;
                }
            }
        }
        Ok(())
    }

    /// Every object with its size on disk, sorted by hash. Files in `objects/` whose names
    /// are not object names are skipped with a warning.
    pub fn list_objects(&self) -> Result<Vec<(Hash, u64)>> {
        let objects = self.dir("objects");
        let mut out = Vec::new();
        for shard in fs::read_dir(&objects).ctx("list", &objects)? {
            let shard = shard.ctx("list", &objects)?;
            let sp = shard.path();
            let sname = shard.file_name();
            let Some(prefix) = sname.to_str().filter(|s| s.len() == 2) else {
                tracing::warn!("ignoring {} (not an object shard)", sp.display());
                continue;
            };
            if !shard.file_type().ctx("stat", &sp)?.is_dir() {
                tracing::warn!("ignoring {} (not an object shard)", sp.display());
                continue;
            }
            for f in fs::read_dir(&sp).ctx("list", &sp)? {
                let f = f.ctx("list", &sp)?;
                let fp = f.path();
                let h = f
                    .file_name()
                    .to_str()
                    .and_then(|n| Hash::from_hex(&format!("{prefix}{n}")))
                    .filter(|h| self.object_path(h) == fp);
                let Some(h) = h else {
                    tracing::warn!("ignoring {} (not an object name)", fp.display());
                    continue;
                };
                let len = f.metadata().ctx("stat", &fp)?.len();
                out.push((h, len));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Re-hash every object (in parallel) and report those whose content does not match their
    /// name, and those that cannot be read.
    pub fn verify_all(&self) -> Result<VerifyReport> {
        let objs = self.list_objects()?;
        let results = par_map(&objs, |(h, _)| hash_file(&self.object_path(h), false));
        let mut rep = VerifyReport {
            checked: objs.len(),
            ..VerifyReport::default()
        };
        for ((h, _), r) in objs.iter().zip(results) {
            match r {
                Ok((got, _, _)) if got == *h => {}
                Ok(_) => rep.corrupt.push(*h),
                Err(e) => rep.unreadable.push((*h, e.to_string())),
            }
        }
        Ok(rep)
    }

    /// Move a damaged object out of `objects/` into `quarantine/<hash>` (kept for a look,
    /// never trusted: to every lookup the object is now missing). Absent objects are fine.
    pub fn quarantine_object(&self, h: &Hash) -> Result<()> {
        let p = self.object_path(h);
        let q = self.dir("quarantine");
        fs::create_dir_all(&q).ctx("create", &q)?;
        let dest = q.join(h.to_hex());
        match fs::rename(&p, &dest) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(CacheError::rename(&p, &dest, e)),
            _ => Ok(()),
        }
    }

    /// Files flow put in `quarantine/` (regular files named `<hash>` or `<hash>.<pid>.<n>`),
    /// with their sizes. Anything else there is not listed, so never removed.
    pub fn quarantined(&self) -> Result<Vec<(PathBuf, u64)>> {
        let q = self.dir("quarantine");
        let mut out = Vec::new();
        match fs::read_dir(&q) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(CacheError::io("list", &q, e)),
            Ok(rd) => {
                for e in rd {
                    let e = e.ctx("list", &q)?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    let hash = name.split('.').next().unwrap_or("");
                    let m = fs::symlink_metadata(e.path()).ctx("stat", &e.path())?;
                    if is_key_name(hash) && m.is_file() {
                        out.push((e.path(), m.len()));
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Delete an object (for gc); absent objects are fine.
    pub fn remove_object(&self, h: &Hash) -> Result<()> {
        let p = self.object_path(h);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(CacheError::io("remove", &p, e)),
            _ => Ok(()),
        }
    }

    /// `root/logs/<key>.log` (not created).
    pub fn log_path(&self, key: &str) -> PathBuf {
        self.dir("logs").join(format!("{key}.log"))
    }
}
