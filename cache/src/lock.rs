//! The cache-wide exclusive lock (`root/lock`), with pid-based waiting/stale reports.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use crate::error::{CacheError, IoCtx, Result};
use crate::fsutil::{hostname, pid_alive};
use crate::store::Store;

/// What [`Store::lock`] reports while acquiring the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockEvent {
    /// Another handle holds the lock; we block until it is released. `pid` is the holder's,
    /// if its lock file names one.
    Waiting { pid: Option<u32> },
    /// The previous holder (this host) died without releasing; the OS freed its lock.
    TookOverStale { pid: u32 },
}

/// Holds the cache lock; dropping it appends `released` to the lock file and unlocks.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
    path: PathBuf,
    /// Our pid is in the file (and `released` is appended on drop).
    record: bool,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.record {
            let _ = self.file.unlock();
            return;
        }
        let r = self
            .file
            .seek(SeekFrom::End(0))
            .and_then(|_| self.file.write_all(b"released\n"));
        if let Err(e) = r {
            tracing::warn!("cannot write {}: {e}", self.path.display());
        }
        let _ = self.file.unlock();
    }
}

/// Content of the lock file: `<pid>\n<host>\n`, then `released\n` once let go.
struct Holder {
    pid: Option<u32>,
    same_host: bool,
    released: bool,
}

fn read_holder(f: &mut File) -> Holder {
    let mut s = String::new();
    let _ = f.seek(SeekFrom::Start(0)).and_then(|_| f.read_to_string(&mut s));
    let mut lines = s.lines();
    let pid = lines.next().and_then(|l| l.trim().parse().ok());
    let same_host = lines.next().is_none_or(|h| h == hostname());
    Holder {
        pid,
        same_host,
        released: s.lines().any(|l| l == "released"),
    }
}

impl Store {
    /// `root/lock`.
    pub fn lock_path(&self) -> PathBuf {
        self.root().join("lock")
    }

    /// Take the exclusive cache lock (an OS file lock on `root/lock`, freed by the OS if the
    /// holder dies). If it is held, reports [`LockEvent::Waiting`] and blocks. Once acquired,
    /// reports [`LockEvent::TookOverStale`] if the file names a dead process of this host that
    /// never wrote `released`. Then records our pid and host in the file.
    pub fn lock(&self, on_event: &mut dyn FnMut(LockEvent)) -> Result<LockGuard> {
        let path = self.lock_path();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .ctx("open", &path)?;
        self.lock_file(file, on_event, true)
    }

    /// [`Store::lock`] for a reader of a cache it may not be able to write (`flow verify` of
    /// a read-only cache): the same exclusive lock, so no run publishes while it reads, taken
    /// on the lock file opened read-only when it cannot be opened for writing; then our pid
    /// is not recorded. `Ok(None)` when there is no lock file and none can be made (nobody
    /// can be running on such a cache).
    pub fn lock_for_reading(&self, on_event: &mut dyn FnMut(LockEvent)) -> Result<Option<LockGuard>> {
        let path = self.lock_path();
        let rw = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path);
        match rw {
            Ok(f) => self.lock_file(f, on_event, true).map(Some),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EACCES | libc::EROFS | libc::EPERM | libc::ENOENT)
                ) =>
            {
                match File::open(&path) {
                    Ok(f) => self.lock_file(f, on_event, false).map(Some),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(CacheError::io("open", &path, e)),
                }
            }
            Err(e) => Err(CacheError::io("open", &path, e)),
        }
    }

    fn lock_file(&self, mut file: File, on_event: &mut dyn FnMut(LockEvent), record: bool) -> Result<LockGuard> {
        let path = self.lock_path();
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                on_event(LockEvent::Waiting {
                    pid: read_holder(&mut file).pid,
                });
                file.lock().ctx("lock", &path)?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(CacheError::io("lock", &path, e)),
        }
        let h = read_holder(&mut file);
        if let Some(pid) = h.pid {
            if h.same_host && !h.released && pid != std::process::id() && !pid_alive(pid) {
                on_event(LockEvent::TookOverStale { pid });
            }
        }
        if !record {
            return Ok(LockGuard {
                file,
                path,
                record: false,
            });
        }
        let write = (|| {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(format!("{}\n{}\n", std::process::id(), hostname()).as_bytes())?;
            file.flush()
        })();
        if let Err(e) = write {
            let _ = file.unlock();
            return Err(CacheError::io("write", &path, e));
        }
        Ok(LockGuard {
            file,
            path,
            record: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn second_locker_waits_until_release() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let s2 = Store::open(d.path()).unwrap();
        let (held_tx, held_rx) = mpsc::channel::<()>();
        let (waiting_tx, waiting_rx) = mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let mut events = vec![];
            let g = s2.lock(&mut |e| events.push(e)).unwrap();
            assert!(events.is_empty(), "{events:?}");
            held_tx.send(()).unwrap();
            // Hold until the main thread reports that it is waiting (or give up, so that a
            // missing report fails the assertion below instead of hanging).
            let _ = waiting_rx.recv_timeout(std::time::Duration::from_secs(10));
            drop(g);
        });
        held_rx.recv().unwrap();
        let mut events = vec![];
        let _g = s
            .lock(&mut |e| {
                events.push(e);
                if let LockEvent::Waiting { .. } = e {
                    let _ = waiting_tx.send(());
                }
            })
            .unwrap();
        t.join().unwrap();
        assert_eq!(
            events,
            vec![LockEvent::Waiting {
                pid: Some(std::process::id())
            }]
        );
        let content = std::fs::read_to_string(s.lock_path()).unwrap();
        assert_eq!(content.lines().next(), Some(&*std::process::id().to_string()));
        assert!(!content.contains("released"));
    }

    #[test]
    fn dead_unreleased_holder_is_reported_as_stale() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let dead = c.id();
        c.wait().unwrap();
        std::fs::write(s.lock_path(), format!("{dead}\n{}\n", hostname())).unwrap();
        let mut events = vec![];
        drop(s.lock(&mut |e| events.push(e)).unwrap());
        assert_eq!(events, vec![LockEvent::TookOverStale { pid: dead }]);
        // Released cleanly: the next taker sees nothing to report.
        let mut events = vec![];
        drop(s.lock(&mut |e| events.push(e)).unwrap());
        assert_eq!(events, vec![]);
        assert!(std::fs::read_to_string(s.lock_path()).unwrap().ends_with("released\n"));
    }
}
