//! The one way a stage starts a process — an `Exec` command, the torch worker — under flow's
//! rules:
//!
//! * the child leads its own process group; stdin is `/dev/null`; stderr, and stdout unless the
//!   caller reads it line by line, are appended to the instance's log;
//! * `PR_SET_PDEATHSIG(SIGTERM)`: if `flow` dies (even by `kill -9`) the child is told. (An
//!   `Exec` command's child is a small `sh` guard that then kills its whole group; the worker
//!   simply terminates.) A child whose parent died before it could ask exits at once;
//! * Ctrl-C (the run's cancel flag) kills the whole group with SIGKILL;
//! * when the child exits, the group is killed too: nothing it left running in the background
//!   can write into outputs after they are taken (a process that leaves the group on purpose,
//!   with `setsid`, escapes: there is no cgroup to hold it).

use std::io::{self, BufRead};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How a supervised process ended.
#[derive(Debug)]
pub enum Ended {
    Exited(ExitStatus),
    /// The run was cancelled; the process group was killed.
    Cancelled,
}

/// Start `cmd` under the rules above and wait for it. `on_line` receives each line of its
/// stdout (when `None`, stdout goes to the log). `log` is appended to, created if missing.
pub fn run(
    mut cmd: Command,
    log: &Path,
    cancel: &AtomicBool,
    on_line: Option<&mut dyn FnMut(&str)>,
) -> io::Result<Ended> {
    let log = std::fs::OpenOptions::new().append(true).create(true).open(log)?;
    cmd.stdin(Stdio::null())
        .stderr(log.try_clone()?)
        .stdout(if on_line.is_some() {
            Stdio::piped()
        } else {
            Stdio::from(log)
        })
        .process_group(0);
    let parent = std::process::id();
    // SAFETY: between fork and exec only async-signal-safe calls: prctl, getppid, _exit; no
    // allocation and no memory of the parent is touched.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            // The parent died before the death signal was set: nobody would send it.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let group = child.id() as i32;
    // SAFETY: kill(2) with a negative pid signals the process group the child leads; no
    // memory is involved.
    let kill_group = || unsafe {
        libc::kill(-group, libc::SIGKILL);
    };
    let stdout = child.stdout.take();
    let done = AtomicBool::new(false);
    let status = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if cancel.load(Ordering::Relaxed) {
                    kill_group();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        if let (Some(out), Some(f)) = (stdout, on_line) {
            for line in io::BufReader::new(out).lines().map_while(Result::ok) {
                f(&line);
            }
        }
        let status = child.wait();
        done.store(true, Ordering::Relaxed);
        status
    })?;
    kill_group();
    if cancel.load(Ordering::Relaxed) {
        return Ok(Ended::Cancelled);
    }
    Ok(Ended::Exited(status))
}

/// The last `n` lines of the log that do not start with `# ` (flow's own header lines).
pub fn log_tail(log: &Path, n: usize) -> Vec<String> {
    let Ok(f) = std::fs::File::open(log) else {
        return Vec::new();
    };
    let lines: Vec<String> = io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter(|l| !l.starts_with("# "))
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}
