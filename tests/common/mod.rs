//! Helpers for integration tests of the `flow` binary.
#![allow(dead_code)]

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
