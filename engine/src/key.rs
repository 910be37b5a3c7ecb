//! Stage keys: the identity of a stage instance's output.
//!
//! `key = blake3("flow-key-v1\n" ++ canonical_json(doc))`, where `doc` is
//!
//! ```text
//! { "kind":    stage kind name ("Train"),
//!   "version": the kind's implementation version,
//!   "fold":    fold index of the instance, or null,
//!   "params":  StageConfig::key_params() — typed params after `defaults` were applied,
//!   "inputs":  [ { "port": "data", "fold": k|null, "hash": <output tree hash of producer> } ... ]
//!              sorted by (port, fold),
//!   "paths":   [ { "port": "inputs[0]", "path": "ds", "hash": <content digest> } ... ] sorted,
//!   "env":     { "libtorch": "2.13.0", ... }  — StageConfig::env_facts(),
//!   "experiment": crate::Experiment — only for a stage that describes its experiment
//!              (StageConfig::describes_experiment: a report); absent for every other stage }
//! ```
//! `canonical_json`: objects with keys sorted by bytes, no whitespace, strings JSON-escaped,
//! integers in decimal, floats in shortest round-trip form (so `1e-4` and `0.0001` are one
//! value).
//!
//! What goes in: only what can change the bytes a stage writes. Upstream stages enter by the
//! *content hash of their outputs*, never by their keys or names — so renaming a stage keeps
//! keys, and a rerun that reproduces identical bytes leaves every downstream key unchanged
//! (early cutoff).
//!
//! What must never go in: absolute paths, mtimes, host names, user names, thread counts,
//! `--jobs`, log levels, GPU/device indices, stage names, the pipeline's name or file, the
//! order stages are declared in — except for a stage that *shows* them
//! ([`crate::Experiment`]: a report's provenance names the pipeline and its stages, so they are
//! part of its output and enter its key; no other stage's key changes with them). Workspace paths enter as written (relative) plus their
//! content digest. Changing this encoding changes every key: bump `KEY_FORMAT` and the
//! golden tests in `tests/suite/golden_keys.rs` together.
//!
//! The same rule binds what stages *write*, since outputs enter downstream keys by content:
//! no wall-clock facts (seconds, images/s, dates), thread counts or resume history inside
//! output files. Those go to the run record's `meta`, which no key sees; otherwise a re-made,
//! bit-identical result has a new hash and early cutoff never happens.

use serde::Serialize;
use serde_json::Value;

/// Version tag of the key encoding.
pub const KEY_FORMAT: &str = "flow-key-v1";

/// One stage input's contribution to a key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct KeyInput {
    pub port: String,
    pub fold: Option<u32>,
    pub hash: String,
}

/// One workspace path's contribution to a key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct KeyPath {
    pub port: String,
    pub path: String,
    pub hash: String,
}

/// Everything a key is computed from. Also stored in run records, so `flow status` can say
/// which part changed.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct KeyDoc {
    pub kind: String,
    pub version: u32,
    pub fold: Option<u32>,
    pub params: Value,
    pub inputs: Vec<KeyInputRec>,
    pub paths: Vec<KeyPathRec>,
    pub env: std::collections::BTreeMap<String, String>,
    /// For a stage that describes its experiment (a report): see [`crate::Experiment`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<crate::Experiment>,
}

/// Serialized form of [`KeyInput`] (with the producer's instance name for humans; the name
/// is *not* hashed).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct KeyInputRec {
    pub port: String,
    pub fold: Option<u32>,
    pub hash: String,
    #[serde(default)]
    pub from: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct KeyPathRec {
    pub port: String,
    pub path: String,
    pub hash: String,
}

impl KeyDoc {
    /// The canonical document that is hashed (producer names dropped, lists sorted).
    pub fn canonical_value(&self) -> Value {
        let mut inputs: Vec<KeyInput> = self
            .inputs
            .iter()
            .map(|i| KeyInput {
                port: i.port.clone(),
                fold: i.fold,
                hash: i.hash.clone(),
            })
            .collect();
        inputs.sort();
        let mut paths: Vec<KeyPath> = self
            .paths
            .iter()
            .map(|p| KeyPath {
                port: p.port.clone(),
                path: p.path.clone(),
                hash: p.hash.clone(),
            })
            .collect();
        paths.sort();
        let mut v = serde_json::json!({
            "kind": self.kind,
            "version": self.version,
            "fold": self.fold,
            "params": self.params,
            "inputs": inputs,
            "paths": paths,
            "env": self.env,
        });
        if let Some(e) = &self.experiment {
            v["experiment"] = serde_json::to_value(e).expect("an experiment is JSON");
        }
        v
    }

    /// The key: 64 hex chars.
    pub fn key(&self) -> String {
        key_of(&self.canonical_value())
    }
}

/// blake3 over the tagged canonical encoding.
pub fn key_of(doc: &Value) -> String {
    let mut h = blake3::Hasher::new();
    h.update(KEY_FORMAT.as_bytes());
    h.update(b"\n");
    h.update(canonical_json(doc).as_bytes());
    h.finalize().to_hex().to_string()
}

/// Deterministic JSON: sorted object keys, no whitespace.
pub fn canonical_json(v: &Value) -> String {
    let mut s = String::new();
    write_canonical(v, &mut s);
    s
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).expect("string"));
                out.push(':');
                write_canonical(&m[*k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                if f.fract() == 0.0 && f.abs() < 1e15 {
                    // 3.0 and 3 are the same param value.
                    out.push_str(&format!("{}", f as i64));
                } else {
                    out.push_str(&format!("{f:e}"));
                }
            } else {
                out.push_str(&n.to_string());
            }
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_sorts_keys_and_normalises_floats() {
        let a = json!({"b": 1, "a": {"y": 0.0001, "x": [1, 2.0]}});
        let b = json!({"a": {"x": [1, 2], "y": 1e-4}, "b": 1});
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(canonical_json(&a), r#"{"a":{"x":[1,2],"y":1e-4},"b":1}"#);
        assert_ne!(key_of(&a), key_of(&json!({"b": 2})));
    }

    fn doc() -> KeyDoc {
        KeyDoc {
            kind: "Train".into(),
            version: 3,
            fold: Some(2),
            params: json!({"lr": 0.0003, "epochs": 6, "model": "ResNet18"}),
            inputs: vec![
                KeyInputRec {
                    port: "split".into(),
                    fold: None,
                    hash: "aa".repeat(32),
                    from: "split".into(),
                },
                KeyInputRec {
                    port: "data".into(),
                    fold: None,
                    hash: "bb".repeat(32),
                    from: "preprocess".into(),
                },
            ],
            paths: vec![],
            env: [("libtorch".to_string(), "2.13.0".to_string())].into_iter().collect(),
            experiment: None,
        }
    }

    /// Pins the encoding. Changing it invalidates every cache: bump KEY_FORMAT with it.
    #[test]
    fn golden_key() {
        assert_eq!(
            doc().key(),
            "c14ccf9c52593d2605d572dda3eb468e0000446ebd5a78c56656cdded24670df"
        );
    }

    #[test]
    fn names_and_order_do_not_enter_the_key_but_content_does() {
        let mut d = doc();
        d.inputs.reverse();
        d.inputs[0].from = "renamed".into();
        assert_eq!(d.key(), doc().key());
        d.inputs[0].hash = "cc".repeat(32);
        assert_ne!(d.key(), doc().key());
        let mut e = doc();
        e.fold = Some(1);
        assert_ne!(e.key(), doc().key());
        let mut v = doc();
        v.version = 4;
        assert_ne!(v.key(), doc().key());
        let mut x = doc();
        x.experiment = Some(crate::Experiment {
            pipeline: "p".into(),
            defaults: Default::default(),
            stages: vec![],
        });
        assert_ne!(x.key(), doc().key(), "a described experiment enters the key");
    }
}
