//! Helpers for integration tests of the `flow` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn flow_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flow"))
}

/// A scratch workspace with its own cache.
pub struct Ws {
    pub dir: tempfile::TempDir,
}

impl Ws {
    pub fn new() -> Ws {
        Ws {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(flow_bin());
        c.current_dir(self.path())
            .args(args)
            .env_remove("FLOW_CACHE_DIR")
            .env("NO_COLOR", "1");
        c
    }
    /// `flow <args>` started, not waited for (stdout and stderr piped).
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.cmd(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start flow")
    }
    pub fn flow(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run flow")
    }
    /// `flow run --json <pipeline>`: the summary, asserting the exit code.
    pub fn run(&self, pipeline: &str, expect_code: i32) -> Summary {
        let out = self.flow(&["run", "--json", pipeline]);
        let code = out.status.code().unwrap_or(-1);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            code,
            expect_code,
            "flow run {pipeline}: exit {code}\nstderr:\n{stderr}\nstdout:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("bad json ({e}): {}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
        Summary::from(&v)
    }
    /// Wait (at most 20 s) until a running stage's command has created `name` in its
    /// sandbox under `.flow/tmp/`: the command has started.
    pub fn wait_in_sandbox(&self, name: &str) {
        let t0 = std::time::Instant::now();
        while !files_under(&self.path().join(".flow/tmp"))
            .iter()
            .any(|p| p.ends_with(name))
        {
            assert!(t0.elapsed().as_secs() < 20, "no stage created {name} in its sandbox");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    pub fn status(&self, pipeline: &str) -> Vec<serde_json::Value> {
        let out = self.flow(&["status", "--json", pipeline]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status json")
    }
}

#[derive(Debug, Default)]
pub struct Summary {
    pub executed: Vec<String>,
    pub cached: Vec<String>,
    pub failed: Vec<String>,
    pub skipped: Vec<String>,
    pub raw: serde_json::Value,
}

fn strs(v: &serde_json::Value, k: &str) -> Vec<String> {
    let mut s: Vec<String> = v[k]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| x["stage"].as_str().unwrap_or("").to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    s.sort();
    s
}

impl From<&serde_json::Value> for Summary {
    fn from(v: &serde_json::Value) -> Summary {
        Summary {
            executed: strs(v, "executed"),
            cached: strs(v, "cached"),
            failed: strs(v, "failed"),
            skipped: strs(v, "skipped"),
            raw: v.clone(),
        }
    }
}

/// Sorted list of owned strings.
pub fn set(items: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// A command's stdout as JSON, or a panic showing both streams.
pub fn stdout_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The names in `dir`, sorted.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every file (not directory) under `dir`, recursively, sorted; empty if `dir` is missing.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                v.extend(files_under(&p));
            } else {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

/// Run `flow` as an unprivileged user (root ignores file modes) or as ourselves.
pub fn unprivileged(ws: &Ws, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut c = ws.cmd(args);
    if unsafe { libc::geteuid() } == 0 {
        unsafe {
            c.pre_exec(|| {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    c.output().unwrap()
}

pub fn chown_tree(path: &std::path::Path, uid: u32) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    unsafe {
        libc::lchown(c.as_ptr(), uid, uid);
    }
    if path.is_dir() && !path.is_symlink() {
        for e in std::fs::read_dir(path).unwrap().flatten() {
            chown_tree(&e.path(), uid);
        }
    }
}

/// Runs `script` in a private mount namespace (as root there), where it can mount a small
/// tmpfs. None where user namespaces are not available.
pub fn in_mount_namespace(script: &str, cwd: &std::path::Path) -> Option<std::process::Output> {
    let probe = std::process::Command::new("unshare")
        .args([
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            "mount -t tmpfs none /mnt 2>/dev/null || mount -t tmpfs none /tmp",
        ])
        .output()
        .ok()?;
    if !probe.status.success() {
        return None;
    }
    Some(
        std::process::Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "sh", "-c", script])
            .current_dir(cwd)
            .env("FLOW", flow_bin())
            .env_remove("FLOW_CACHE_DIR")
            .env("NO_COLOR", "1")
            .output()
            .unwrap(),
    )
}

/// A small deterministic RNG (SplitMix64) for generated test cases: a seed reproduces a case.

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// The rows of a CSV file of the workspace, as column → value maps.
pub fn rows(ws: &Ws, rel: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut r = csv::Reader::from_path(ws.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    r.deserialize().map(|x| x.unwrap()).collect()
}

/// A JSON file of the workspace.
pub fn json(ws: &Ws, rel: &str) -> serde_json::Value {
    serde_json::from_str(&ws.read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A number from the environment (decimal or `0x` hex), for the long variants of tests.
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        let v = v.trim();
        v.strip_prefix("0x")
            .map(|h| u64::from_str_radix(h, 16))
            .unwrap_or_else(|| v.parse())
            .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
    })
}

/// Wait (up to 30 s) until `path` exists.
pub fn wait_for(path: &Path, what: &str) {
    let t = std::time::Instant::now();
    while !path.exists() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Whether a JSON value is a string containing `needle` (for `assert!(has(&v["error"], "…"), "{v}")`).
pub fn has(v: &serde_json::Value, needle: &str) -> bool {
    v.as_str().is_some_and(|s| s.contains(needle))
}

/// `scripts/check-report DIR`: headless Chromium renders the page (a report's or a study's)
/// with its plots, its tables, no overflow, and as a PDF. `scripts/test` installs Debian's
/// chromium where it is missing; only FLOW_NO_BROWSER=1 skips the check.
pub fn check_page(dir: &Path) {
    if std::env::var_os("FLOW_NO_BROWSER").is_some() {
        eprintln!("note: FLOW_NO_BROWSER is set; scripts/check-report not run");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/check-report"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/check-report (exit 2: chromium missing; scripts/test installs it, FLOW_NO_BROWSER=1 skips): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
