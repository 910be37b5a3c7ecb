//! `flow-cache`: the on-disk cache of `flow`. It knows nothing of stages.
//!
//! A cache root (`<workspace>/.flow` unless `--cache-dir`) holds:
//!
//! | path | what | written by |
//! |---|---|---|
//! | `CACHEDIR.TAG` | marks a flow cache (and tells backup tools to skip it) | [`Store::open`] |
//! | `objects/ab/cdef…` | immutable content-addressed files, named by their blake3 [`Hash`](struct@Hash), read-only; directory manifests ([`Tree`]) are objects too | publishing |
//! | `runs/<key>.json` | one run record per stage-instance key: output tree hash, file list, mtimes, meta | publishing, written last |
//! | `meta/last/<pipeline>/<instance>`, `meta/views/…` | the key of each instance's last run (for "why stale"); what flow made under `out/` | the engine |
//! | `state/` | the stat cache ([`FileStateCache`]) and the torch worker's cached answer | `flow` |
//! | `tmp/` | per-instance scratch dirs ([`TmpDir`]) with an owner marker; a dead process's are removed by the next run | every run |
//! | `logs/<key>.log` | each instance's log | every run |
//! | `resume/<key>/` | per-epoch checkpoints that survive a killed run; removed once the instance is published | Train, Retrain |
//! | `quarantine/` | damaged objects moved aside by `flow verify` or publishing, never deleted in place | verify |
//! | `lock` | the cache-wide [`lock`](Store::lock) (`flock`) | `flow run`, `gc`, `verify` |
//!
//! [`Store`] has the primitives: atomic writes (tmp file, fsync, rename), materializing trees,
//! [`verify_all`](Store::verify_all) / [`list_objects`](Store::list_objects) /
//! [`remove_object`](Store::remove_object) for verify and gc. [`FileStateCache`] maps
//! (canonical path, size, mtime, inode, ctime) → blake3, so unchanged input files are not
//! re-read. Every error is a [`CacheError`] whose message names the path involved.

mod error;
mod filestate;
mod fsutil;
mod hash;
mod lock;
mod records;
mod store;
mod tmp;
mod tree;

pub use error::{shown, CacheError, Result};
pub use filestate::{FileStateCache, PathDigest};
pub use fsutil::{pid_alive, remove_tree};
pub use hash::Hash;
pub use lock::{LockEvent, LockGuard};
pub use store::{is_key_name, Materialize, Problem, Store, VerifyReport, CACHE_TAG, SUBDIRS};
pub use tmp::TmpDir;
pub use tree::{normalize_rel, rel_path_problem, valid_rel_path, Entry, Tree};

#[cfg(test)]
mod store_tests;
