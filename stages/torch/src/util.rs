//! Small shared helpers: user-facing errors, progress events, seeds, AUC, atomic writes.

use std::io::Write;
use std::path::Path;

use flow_stages::worker::WorkerEvent;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Worker results: the error is the one-line message flow shows the user.
pub type Res<T> = Result<T, String>;

/// `.ctx(|| "cannot read x")` turns any displayable error into "cannot read x: <error>".
pub trait Context<T> {
    fn ctx<S: Into<String>>(self, what: impl FnOnce() -> S) -> Res<T>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn ctx<S: Into<String>>(self, what: impl FnOnce() -> S) -> Res<T> {
        self.map_err(|e| format!("{}: {}", what().into(), one_line(&e.to_string())))
    }
}

/// First line of a (possibly multi-line, e.g. libtorch) message.
pub fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

/// Prints a progress event on stdout (one JSON line, flushed) for flow to forward.
pub fn progress(frac: f64, msg: impl Into<String>) {
    let ev = WorkerEvent::Progress {
        frac: frac.clamp(0.0, 1.0),
        msg: msg.into(),
    };
    let line = serde_json::to_string(&ev).expect("json");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Prints the run-record meta event.
/// Facts for the instance's run record (`meta`, merged key by key over earlier events): what
/// is true of this run but not determined by the key — seconds, threads, resumes. They must
/// never go into output files, whose hashes are what downstream keys and early cutoff use.
pub fn meta_event(meta: serde_json::Value) {
    let line = serde_json::to_string(&WorkerEvent::Meta(meta)).expect("json");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A human log line (stderr, which flow appends to the instance's log).
pub fn log(msg: impl AsRef<str>) {
    eprintln!("{}", msg.as_ref());
}

/// A ChaCha8 stream identified by up to four numbers (seed, fold, epoch, purpose).
pub fn rng(parts: [u64; 4]) -> ChaCha8Rng {
    let mut seed = [0u8; 32];
    for (i, p) in parts.iter().enumerate() {
        seed[i * 8..(i + 1) * 8].copy_from_slice(&p.to_le_bytes());
    }
    ChaCha8Rng::from_seed(seed)
}

/// splitmix64 over several numbers: a well-mixed 64-bit value.
pub fn mix(parts: &[u64]) -> u64 {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for &p in parts {
        h ^= p;
        h = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h = z ^ (z >> 31);
    }
    h
}

pub use flow_stages::metrics::auc;
/// AUC (Mann–Whitney, ties half) and the logistic function: the report's and calibration's
/// own, so training's validation AUC is the same number the report computes.
pub use flow_stages::metrics::sigmoid;

/// Writes `bytes` to `path` through a temporary file, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Res<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).ctx(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes).ctx(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all().ctx(|| format!("cannot sync {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).ctx(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

pub fn write_json(path: &Path, v: &serde_json::Value) -> Res<()> {
    let s = serde_json::to_string_pretty(v).expect("json");
    std::fs::write(path, s + "\n").ctx(|| format!("cannot write {}", path.display()))
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Res<T> {
    let bytes = std::fs::read(path).ctx(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes).ctx(|| format!("bad JSON in {}", path.display()))
}

/// "a, b, c, … (12 in all)" from the first `max` names.
pub fn list_some(names: &[String], max: usize) -> String {
    let mut s = names.iter().take(max).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > max {
        s.push_str(&format!(", … ({} in all)", names.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_by_hand() {
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &[0, 0, 1, 1]), Some(1.0));
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &[0, 0, 1, 1]), Some(0.0));
        // one tie between a positive and a negative counts half
        assert_eq!(auc(&[0.1, 0.5, 0.5, 0.9], &[0, 0, 1, 1]), Some(0.875));
        assert_eq!(auc(&[0.1, 0.5], &[1, 1]), None);
    }
}
