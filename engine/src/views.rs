//! `out/<pipeline>/<stage>/[foldK/]`: read-only views of instances' outputs, as hard links to
//! the store's objects (symlinks only across file systems).
//!
//! `out/` is the one place outside the cache where `flow` writes into a user's workspace, so
//! this module holds the rules that keep it from touching anything else:
//!
//! * A view's path is built from **single directory names** only (the pipeline name, a stage
//!   name, `foldK`), each checked again here although the spec already validates them; a
//!   name that is a path (`..`, `a/b`, ``) is refused, never joined.
//! * Below `out/`, flow **never follows a symlink** and never replaces a file: if
//!   `out/<pipeline>` or `out/<pipeline>/<stage>` is a symlink or a file, the view is not
//!   made (a warning says why). `out/` itself may be a symlink (to put views on another disk).
//! * An existing directory is **removed or replaced only when it is a view flow made**: it
//!   holds exactly the files of the view recorded for it (`meta/views/<pipeline>/<rel>`:
//!   each file's object hash and the device/inode of the link flow created), or it holds
//!   only such views (fold directories). A file a user added, or replaced by editing it
//!   (editors write a new inode), makes the directory not flow's: it is left alone and the
//!   warning names the file. Caches from before view records fall back to the last run's
//!   tree (same inodes as its objects).
//! * Views of stages that are no longer in the pipeline, or folds beyond the current fold
//!   count, are removed by [`Views::sweep`] under the same rule; leftovers of a killed run
//!   (`.<name>.view.<pid>.<n>` directories of dead pids) too.
//!
//! A replacement is built beside the view and renamed into place, so a reader sees the old
//! view or the new one. A no-op run writes nothing here.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use flow_cache::{Hash, Materialize, Store, Tree};
use serde::{Deserialize, Serialize};

use crate::plan::{last_run_name, LastRun, RunRecord};

/// What flow put at one view (`meta/views/<pipeline>/<stage>[/foldK].json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct ViewRecord {
    files: BTreeMap<String, ViewFile>,
}

/// One file of a view: the object it shows and the link flow made for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ViewFile {
    hash: Hash,
    dev: u64,
    ino: u64,
    /// A symlink to the object (across file systems) rather than a hard link.
    #[serde(default)]
    symlink: bool,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Whether `c` is a single, ordinary directory name (what view paths are built from).
pub fn plain_component(c: &str) -> bool {
    !c.is_empty() && c != "." && c != ".." && !c.contains(['/', '\0', '\n']) && !c.starts_with('.')
}

/// The views of one pipeline under one `out/` root.
pub struct Views<'a> {
    store: &'a Store,
    out_root: PathBuf,
    pipeline: String,
}

/// The run-facts files of `out/<pipeline>/` ([`crate::provenance`]): not stage views (a
/// stage name has no `.`), written by [`Views::write_run_facts`], skipped by the sweep.
pub const RUN_FACTS: [&str; 2] = ["run.json", "run.js"];

/// What flow wrote at the run-facts files (`meta/views/<pipeline>/_run-facts.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct RunFactsRecord {
    /// File name → blake3 of the bytes flow wrote.
    files: BTreeMap<String, String>,
}

/// Why a directory is not a view flow made: the first file that says so.
type NotOurs = String;

impl<'a> Views<'a> {
    pub fn new(store: &'a Store, out_root: &Path, pipeline: &str) -> Views<'a> {
        Views {
            store,
            out_root: out_root.to_path_buf(),
            pipeline: pipeline.to_string(),
        }
    }

    fn shown(&self, rel: &str) -> String {
        let base = Path::new("out").join(&self.pipeline);
        if rel.is_empty() {
            base.display().to_string()
        } else {
            base.join(rel).display().to_string()
        }
    }

    fn record_name(&self, rel: &str) -> String {
        format!("views/{}/{rel}", self.pipeline)
    }

    /// The view flow recorded for `rel` (`stage` or `stage/foldK`), or — for a cache from
    /// before view records — the last run's tree, linked to today's objects.
    fn recorded(&self, rel: &str) -> Option<ViewRecord> {
        if let Ok(Some(r)) = self.store.read_meta::<ViewRecord>(&self.record_name(rel)) {
            return Some(r);
        }
        let instance = match rel.split_once('/') {
            Some((stage, fold)) if fold.strip_prefix("fold").is_some_and(|k| k.parse::<u32>().is_ok()) => {
                format!("{stage}@{fold}")
            }
            Some(_) => return None,
            None => rel.to_string(),
        };
        let last = self
            .store
            .read_meta::<LastRun>(&last_run_name(&self.pipeline, &instance))
            .ok()
            .flatten()?;
        let rec = self.store.read_record::<RunRecord>(&last.key).ok().flatten()?;
        let mut files = BTreeMap::new();
        for (path, e) in &rec.tree.entries {
            let m = fs::metadata(self.store.object_path(&e.hash)).ok()?;
            files.insert(
                path.clone(),
                ViewFile {
                    hash: e.hash,
                    dev: m.dev(),
                    ino: m.ino(),
                    symlink: false,
                },
            );
        }
        Some(ViewRecord { files })
    }

    /// `Ok` when `dir` holds exactly the files of `rec` (the links flow made), else the first
    /// file that differs.
    fn matches(&self, dir: &Path, rec: &ViewRecord) -> Result<(), NotOurs> {
        let mut found = Vec::new();
        list_files(dir, "", &mut found).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        for rel in &found {
            let Some(f) = rec.files.get(rel) else {
                return Err(format!("{rel} is not a file flow put there"));
            };
            let p = dir.join(rel);
            let ok = match fs::symlink_metadata(&p) {
                Ok(m) if f.symlink => {
                    m.file_type().is_symlink() && fs::read_link(&p).is_ok_and(|t| t == self.store.object_path(&f.hash))
                }
                Ok(m) => !m.file_type().is_symlink() && m.dev() == f.dev && m.ino() == f.ino,
                Err(_) => false,
            };
            if !ok {
                return Err(format!("{rel} was replaced or edited after flow made it"));
            }
        }
        Ok(())
    }

    /// `Ok` when the directory `out/<pipeline>/<rel>` is a view flow made (or only holds
    /// such views, or nothing), so it may be replaced or removed; else why not.
    fn owned(&self, rel: &str, dir: &Path, depth: usize) -> Result<(), NotOurs> {
        let rec = self.recorded(rel);
        let exact = match &rec {
            Some(r) => self.matches(dir, r),
            None => Err(String::new()),
        };
        if exact.is_ok() {
            return Ok(());
        }
        // A recorded view that no longer matches, unless it now is a directory of views (a
        // stage that went per-fold): its subdirectories (`plots/`) are part of it, so the
        // mismatch is the reason, not some file further down.
        if let Err(why) = &exact {
            let subviews = fs::read_dir(dir)
                .map(|rd| {
                    rd.flatten().any(|e| {
                        self.recorded(&format!("{rel}/{}", e.file_name().to_string_lossy()))
                            .is_some()
                    })
                })
                .unwrap_or(false);
            if !why.is_empty() && !subviews {
                return Err(why.clone());
            }
        }
        // A directory of views (the folds of a per-fold stage), or an empty one.
        let entries = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        for e in entries {
            let e = e.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if !is_dir || depth == 0 {
                return Err(match &exact {
                    Err(why) if !why.is_empty() => why.clone(),
                    _ => format!("{name} is not a file flow put there"),
                });
            }
            self.owned(&format!("{rel}/{name}"), &e.path(), depth - 1)
                .map_err(|why| format!("{name}/{why}"))?;
        }
        Ok(())
    }

    /// Make sure `out/<pipeline>[/<stage>]` is a real directory (creating it), never
    /// following a symlink.
    fn ensure_dir(&self, path: &Path, rel: &str) -> Result<(), String> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(m) if m.file_type().is_symlink() => Err(format!(
                "{} is a symlink, which flow does not follow; remove it to get the view back",
                self.shown(rel)
            )),
            Ok(_) => Err(format!(
                "{} is a file, not a directory flow made; move it away to get the view back",
                self.shown(rel)
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => self.ensure_dir(path, rel),
                Err(e) => Err(format!("cannot create {}: {e}", path.display())),
            },
            Err(e) => Err(format!("cannot stat {}: {e}", path.display())),
        }
    }

    /// Show `tree` at `out/<pipeline>/<stage>/[foldK/]`. A view that already shows exactly
    /// `tree` is left alone. `Err` is a warning for the user: nothing was changed.
    pub fn expose(&self, stage: &str, fold: Option<u32>, tree: &Tree) -> Result<(), String> {
        if !plain_component(&self.pipeline) || !plain_component(stage) {
            return Err(format!(
                "not making a view for {:?}/{:?}: not plain directory names",
                self.pipeline, stage
            ));
        }
        match fs::metadata(&self.out_root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("{} is not a directory; no views made", self.out_root.display())),
            Err(_) => fs::create_dir_all(&self.out_root)
                .map_err(|e| format!("cannot create {}: {e}", self.out_root.display()))?,
        }
        let pdir = self.out_root.join(&self.pipeline);
        self.ensure_dir(&pdir, "")?;
        let (rel, parent, name) = match fold {
            None => (stage.to_string(), pdir.clone(), stage.to_string()),
            Some(k) => {
                let sdir = pdir.join(stage);
                // The stage was a single instance before: its view goes first (if flow's).
                if fs::symlink_metadata(&sdir).is_ok_and(|m| m.is_dir()) && self.recorded(stage).is_some() {
                    let rec = self.recorded(stage).expect("checked");
                    if self.matches(&sdir, &rec).is_ok() {
                        flow_cache::remove_tree(&sdir).map_err(|e| e.to_string())?;
                        let _ = self.store.remove_meta(&self.record_name(stage));
                    }
                }
                self.ensure_dir(&sdir, stage)?;
                (format!("{stage}/fold{k}"), sdir, format!("fold{k}"))
            }
        };
        let dest = parent.join(&name);
        if let Some(current) = self.current(&dest, tree) {
            // Record it once for a view made before view records existed.
            if self
                .store
                .read_meta::<ViewRecord>(&self.record_name(&rel))
                .ok()
                .flatten()
                .as_ref()
                != Some(&current)
            {
                let _ = self.store.write_meta_nosync(&self.record_name(&rel), &current);
            }
            return Ok(());
        }
        let exists = match fs::symlink_metadata(&dest) {
            Ok(m) if m.is_dir() => true,
            Ok(_) => {
                return Err(format!(
                    "{} is a file or symlink flow did not make; move it away to get the view back",
                    self.shown(&rel)
                ))
            }
            Err(_) => false,
        };
        if exists {
            self.owned(&rel, &dest, 2).map_err(|why| {
                format!(
                    "not updating {}: {why}; move the file elsewhere (outputs are in the cache either way) \
                     and run again to get the view",
                    self.shown(&rel)
                )
            })?;
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = parent.join(format!(".{name}.view.{}.{n}", std::process::id()));
        let old = parent.join(format!(".{name}.old.{}.{n}", std::process::id()));
        let res = (|| -> Result<ViewRecord, String> {
            fs::create_dir(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
            self.store
                .materialize(tree, &tmp, Materialize::Link)
                .map_err(|e| e.to_string())?;
            let rec = self.linked(&tmp, tree)?;
            if exists {
                fs::rename(&dest, &old).map_err(|e| format!("cannot move {} aside: {e}", dest.display()))?;
            }
            fs::rename(&tmp, &dest).map_err(|e| format!("cannot rename into {}: {e}", dest.display()))?;
            Ok(rec)
        })();
        match res {
            Ok(rec) => {
                if exists {
                    let _ = flow_cache::remove_tree(&old);
                }
                self.store
                    .write_meta_nosync(&self.record_name(&rel), &rec)
                    .map_err(|e| e.to_string())
            }
            Err(e) => {
                let _ = flow_cache::remove_tree(&tmp);
                if exists && !dest.exists() {
                    let _ = fs::rename(&old, &dest);
                }
                Err(format!("cannot update {}: {e}", self.shown(&rel)))
            }
        }
    }

    /// The record of `dest` when it shows exactly `tree` (each file the object itself, or a
    /// symlink to it).
    fn current(&self, dest: &Path, tree: &Tree) -> Option<ViewRecord> {
        let mut found = Vec::new();
        list_files(dest, "", &mut found).ok()?;
        if found.len() != tree.entries.len() {
            return None;
        }
        let mut files = BTreeMap::new();
        for (rel, e) in &tree.entries {
            let p = dest.join(rel);
            let lm = fs::symlink_metadata(&p).ok()?;
            let obj = self.store.object_path(&e.hash);
            let f = if lm.file_type().is_symlink() {
                if fs::read_link(&p).ok()? != obj {
                    return None;
                }
                ViewFile {
                    hash: e.hash,
                    dev: lm.dev(),
                    ino: lm.ino(),
                    symlink: true,
                }
            } else {
                let om = fs::metadata(&obj).ok()?;
                if om.ino() != lm.ino() || om.dev() != lm.dev() {
                    return None;
                }
                ViewFile {
                    hash: e.hash,
                    dev: lm.dev(),
                    ino: lm.ino(),
                    symlink: false,
                }
            };
            files.insert(rel.clone(), f);
        }
        Some(ViewRecord { files })
    }

    /// The record of a view just materialised at `dir`.
    fn linked(&self, dir: &Path, tree: &Tree) -> Result<ViewRecord, String> {
        let mut files = BTreeMap::new();
        for (rel, e) in &tree.entries {
            let p = dir.join(rel);
            let m = fs::symlink_metadata(&p).map_err(|err| format!("cannot stat {}: {err}", p.display()))?;
            files.insert(
                rel.clone(),
                ViewFile {
                    hash: e.hash,
                    dev: m.dev(),
                    ino: m.ino(),
                    symlink: m.file_type().is_symlink(),
                },
            );
        }
        Ok(ViewRecord { files })
    }

    /// Write `out/<pipeline>/run.json` and `run.js` (the same document as a script setting
    /// `window.FLOW_RUN`, for a report page opened from `out/`). A file is replaced only when
    /// it is absent or holds what flow wrote there last; identical content is not rewritten
    /// (a no-op run writes nothing); a symlink, a directory or a file someone edited is left
    /// alone, and the error says so.
    pub fn write_run_facts(&self, doc: &serde_json::Value) -> Result<(), String> {
        if !plain_component(&self.pipeline) {
            return Ok(());
        }
        let pdir = self.out_root.join(&self.pipeline);
        if !fs::symlink_metadata(&pdir).is_ok_and(|m| m.is_dir()) {
            return Ok(());
        }
        let json = serde_json::to_string_pretty(doc).expect("JSON") + "\n";
        // `</` cannot end the script early; U+2028/9 are line ends to old JS parsers.
        let js_doc = serde_json::to_string(doc)
            .expect("JSON")
            .replace("</", "<\\/")
            .replace('\u{2028}', "\\u2028")
            .replace('\u{2029}', "\\u2029");
        let js = format!("// Written by flow run: see run.json.\nwindow.FLOW_RUN = {js_doc};\n");
        let meta = format!("views/{}/_run-facts", self.pipeline);
        let mut rec: RunFactsRecord = self.store.read_meta(&meta).ok().flatten().unwrap_or_default();
        let mut problems = Vec::new();
        for (name, bytes) in [(RUN_FACTS[0], json.as_bytes()), (RUN_FACTS[1], js.as_bytes())] {
            let path = pdir.join(name);
            let new_hash = blake3::hash(bytes).to_hex().to_string();
            match fs::symlink_metadata(&path) {
                Err(_) => {}
                Ok(m) if !m.is_file() => {
                    problems.push(format!("{} is not a file flow made; left alone", self.shown(name)));
                    continue;
                }
                Ok(_) => {
                    let now = fs::read(&path).map(|b| blake3::hash(&b).to_hex().to_string());
                    match now {
                        Ok(h) if h == new_hash => continue,
                        Ok(h) if rec.files.get(name) == Some(&h) => {}
                        _ => {
                            problems.push(format!(
                                "{} was changed since flow wrote it; left alone (remove it to get it back)",
                                self.shown(name)
                            ));
                            continue;
                        }
                    }
                }
            }
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let tmp = pdir.join(format!(".{name}.tmp.{}.{n}", std::process::id()));
            let written = fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, &path));
            if let Err(e) = written {
                let _ = fs::remove_file(&tmp);
                problems.push(format!("cannot write {}: {e}", self.shown(name)));
                continue;
            }
            rec.files.insert(name.to_string(), new_hash);
        }
        let _ = self.store.write_meta(&meta, &rec);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Remove the views of `out/<pipeline>/` that no instance shows any more: stages not in
    /// `stages` (stage name → fold count, `None` for a single instance), folds at or beyond
    /// the fold count, and a killed run's half-made views. Directories that are not views
    /// flow made are left alone; the returned warnings say which.
    pub fn sweep(&self, stages: &BTreeMap<String, Option<u32>>) -> Vec<String> {
        let mut warnings = Vec::new();
        if !plain_component(&self.pipeline) {
            return warnings;
        }
        let pdir = self.out_root.join(&self.pipeline);
        match fs::symlink_metadata(&pdir) {
            Ok(m) if m.is_dir() => {}
            _ => return warnings,
        }
        for name in sorted_names(&pdir) {
            let path = pdir.join(&name);
            if name.starts_with('.') {
                self.remove_if_leftover(&path, &name, &mut warnings);
                continue;
            }
            if RUN_FACTS.contains(&name.as_str()) {
                continue;
            }
            match stages.get(&name) {
                None => self.remove_view(&name, &path, &mut warnings, "is not a stage of the pipeline any more"),
                Some(None) => {}
                Some(Some(folds)) => {
                    let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
                    if !is_dir {
                        continue;
                    }
                    for s in sorted_names(&path) {
                        let sp = path.join(&s);
                        if s.starts_with('.') {
                            self.remove_if_leftover(&sp, &s, &mut warnings);
                            continue;
                        }
                        let current = s
                            .strip_prefix("fold")
                            .and_then(|k| k.parse::<u32>().ok())
                            .is_some_and(|k| k < *folds && s == format!("fold{k}"));
                        if !current {
                            self.remove_view(
                                &format!("{name}/{s}"),
                                &sp,
                                &mut warnings,
                                &format!("is not one of the stage's {folds} folds"),
                            );
                        }
                    }
                }
            }
        }
        warnings
    }

    /// Remove `path` if it is a half-made view of a dead run: named `.<name>.view.<pid>.<n>`
    /// or `.<name>.old.<pid>.<n>` by a process that is gone, a real directory, and holding
    /// only links to this store's objects. Anything else with such a name is the user's.
    fn remove_if_leftover(&self, path: &Path, name: &str, warnings: &mut Vec<String>) {
        let mut parts = name.rsplitn(4, '.');
        let (Some(n), Some(pid), Some(what)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        let Ok(pid) = pid.parse::<u32>() else { return };
        if n.parse::<u64>().is_err() || !(what == "view" || what == "old") {
            return;
        }
        if pid == std::process::id() || flow_cache::pid_alive(pid) {
            return;
        }
        let mut files = Vec::new();
        let is_dir = fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
        if is_dir
            && list_files(path, "", &mut files).is_ok()
            && files.iter().all(|f| self.store.is_object_link(&path.join(f)))
        {
            let _ = flow_cache::remove_tree(path);
        } else {
            warnings.push(format!(
                "{} looks like a half-made view of a killed run, but holds files flow did not put there; left alone",
                path.display()
            ));
        }
    }

    fn remove_view(&self, rel: &str, path: &Path, warnings: &mut Vec<String>, why: &str) {
        let is_dir = fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
        let owned = if is_dir {
            self.owned(rel, path, 2)
        } else {
            Err(format!("{} is a file or symlink flow did not make", self.shown(rel)))
        };
        match owned {
            Ok(()) => {
                if let Err(e) = flow_cache::remove_tree(path) {
                    warnings.push(format!("cannot remove the old view {}: {e}", self.shown(rel)));
                    return;
                }
                let _ = self.store.remove_meta(&self.record_name(rel));
            }
            Err(not_ours) => warnings.push(format!(
                "{} {why}, but it holds files flow did not put there ({not_ours}); left alone",
                self.shown(rel)
            )),
        }
    }
}

/// The names in `dir`, sorted (none if it cannot be listed).
fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Every non-directory under `dir`, as `/`-separated paths relative to it (symlinks not
/// followed).
fn list_files(dir: &Path, prefix: &str, out: &mut Vec<String>) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if e.file_type()?.is_dir() {
            list_files(&e.path(), &rel, out)?;
        } else {
            out.push(rel);
        }
    }
    Ok(())
}
