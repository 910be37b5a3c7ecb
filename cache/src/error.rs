//! [`CacheError`]: every message names the path it is about.

use std::io;
use std::path::{Path, PathBuf};

/// Errors of the cache. The `Display` text always names the file or directory involved
/// and, for OS errors, ends with the OS message, e.g.
/// `cannot write /x/.flow/tmp/obj.1.2.tmp: No space left on device (os error 28)`.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// An OS-level failure on one path. `op` is a verb: "read", "write", "create", "stat", ...
    #[error("cannot {op} {}: {err}", shown(path))]
    Io {
        op: &'static str,
        path: PathBuf,
        err: io::Error,
    },
    /// A rename (or move) from one path to another failed.
    #[error("cannot move {} to {}: {err}", shown(from), shown(to))]
    Rename { from: PathBuf, to: PathBuf, err: io::Error },
    /// A file in the cache exists but its content is wrong (bad object, bad tree manifest).
    #[error("{}: {what}", shown(path))]
    Corrupt { path: PathBuf, what: String },
    /// A value could not be encoded as JSON for `path`.
    #[error("cannot encode {}: {err}", path.display())]
    Encode { path: PathBuf, err: serde_json::Error },
    /// The destination of a materialisation (or similar) already exists.
    #[error("{} already exists", path.display())]
    Exists { path: PathBuf },
    /// A file the cache cannot represent: non-UTF-8 name, newline in a name, dangling symlink,
    /// symlink loop, fifo/socket/device, ...
    #[error("{}: {what}", shown(path))]
    Unsupported { path: PathBuf, what: String },
    /// A record key, meta name, tmp label or tree path that is not allowed.
    #[error("invalid name {name:?} (under {}): {what}", dir.display())]
    InvalidName {
        dir: PathBuf,
        name: String,
        what: &'static str,
    },
    /// A directory given as the cache that is not one (and not empty).
    #[error(
        "{} is not a flow cache ({what}): give an empty or new directory as the cache",
        shown(path)
    )]
    NotACache { path: PathBuf, what: String },
    /// [`crate::Tree::parse`] rejected its input; the entry path is named when known.
    #[error("malformed tree manifest, line {line}: {what}")]
    BadTree { line: usize, what: String },
}

/// A path for a message: control characters (a newline in a file name) escaped, so the
/// message stays one line and says exactly which name is meant.
pub fn shown(path: &Path) -> String {
    let s = path.display().to_string();
    if !s.chars().any(char::is_control) {
        return s;
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl CacheError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, err: io::Error) -> CacheError {
        CacheError::Io {
            op,
            path: path.into(),
            err,
        }
    }

    pub(crate) fn rename(from: &Path, to: &Path, err: io::Error) -> CacheError {
        CacheError::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            err,
        }
    }

    pub(crate) fn unsupported(path: &Path, what: impl Into<String>) -> CacheError {
        CacheError::Unsupported {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }

    /// The kind of the underlying OS error, if this is one (e.g. to tell `StorageFull`).
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            CacheError::Io { err, .. } | CacheError::Rename { err, .. } => Some(err.kind()),
            _ => None,
        }
    }

    /// The path this error is about (the source path for a failed move).
    pub fn path(&self) -> Option<&Path> {
        match self {
            CacheError::Io { path, .. }
            | CacheError::Corrupt { path, .. }
            | CacheError::Encode { path, .. }
            | CacheError::Exists { path }
            | CacheError::Unsupported { path, .. }
            | CacheError::NotACache { path, .. } => Some(path),
            CacheError::Rename { from, .. } => Some(from),
            CacheError::InvalidName { dir, .. } => Some(dir),
            CacheError::BadTree { .. } => None,
        }
    }
}

/// `Result` with [`CacheError`].
pub type Result<T> = std::result::Result<T, CacheError>;

/// Attach a path and a verb to an `io::Result`.
pub(crate) trait IoCtx<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoCtx<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|e| CacheError::io(op, path, e))
    }
}
