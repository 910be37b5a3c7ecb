//! `flow-cache`: the on-disk cache of `flow`. It knows nothing of stages.
//!
//! - [`Store`] (a cache root such as `<workspace>/.flow`): immutable content-addressed
//!   objects `objects/ab/cdef…` named by their blake3 [`Hash`](struct@Hash), directory
//!   manifests ([`Tree`], stored as objects), run records `runs/<key>.json`, metadata
//!   `meta/<name>.json`, scratch directories under `tmp/` ([`TmpDir`]), the cache-wide
//!   [`lock`](Store::lock), and the [`verify_all`](Store::verify_all) /
//!   [`list_objects`](Store::list_objects) / [`remove_object`](Store::remove_object)
//!   primitives for verify and gc. Every write is atomic (tmp file, fsync, rename).
//! - [`FileStateCache`]: (canonical path, size, mtime, inode, ctime) → blake3, so unchanged
//!   input files are not re-read.
//!
//! Every error is a [`CacheError`] whose message names the path involved.

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
