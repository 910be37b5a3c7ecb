//! What every command starts from: the workspace, the cache directory, `--json`; loading
//! pipelines, opening the cache (into a [`flow_engine::Context`]), and the one rule for files
//! a user asks flow to write.

use std::path::{Path, PathBuf};

use flow_cache::{LockEvent, LockGuard, Store};
use flow_engine::{Context, Dag, Diagnostic};

use crate::exit::{Exit, Fail};
use crate::render::render_diag;
use crate::Cli;

#[derive(Clone)]
pub struct Ctx {
    pub json: bool,
    /// Absolute (stage sandboxes link to workspace paths).
    pub workspace: PathBuf,
    pub cache_dir: PathBuf,
    /// `--set` overrides, applied to every pipeline the command loads.
    pub set: Vec<flow_engine::overrides::Override>,
}

impl Ctx {
    pub fn new(cli: &Cli) -> Result<Ctx, Fail> {
        let workspace = match &cli.workspace {
            Some(w) => match std::fs::metadata(w) {
                Ok(m) if m.is_dir() => std::fs::canonicalize(w)
                    .map_err(|e| Fail::usage(format!("cannot resolve workspace {}: {e}", w.display())))?,
                Ok(_) => return Err(Fail::usage(format!("-C {}: not a directory", w.display()))),
                Err(e) => return Err(Fail::usage(format!("-C {}: {e}", w.display()))),
            },
            None => {
                std::env::current_dir().map_err(|e| Fail::usage(format!("cannot tell the current directory: {e}")))?
            }
        };
        let cache_dir = cli.cache_dir.clone().unwrap_or_else(|| workspace.join(".flow"));
        let out = resolved(&workspace.join("out"));
        let cache = resolved(&cache_dir);
        if cache.starts_with(&out) || out.starts_with(&cache) {
            return Err(Fail::usage(format!(
                "--cache-dir {} overlaps {} (where flow exposes outputs): put the cache elsewhere",
                cache_dir.display(),
                out.display()
            )));
        }
        let set = cli
            .set
            .iter()
            .map(|a| flow_engine::overrides::Override::parse(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Fail::usage)?;
        Ok(Ctx {
            json: cli.json,
            workspace,
            cache_dir,
            set,
        })
    }

    /// Pipeline paths are taken relative to the current directory, as the user typed them.
    pub fn load(&self, path: &Path) -> Result<Dag, Vec<Diagnostic>> {
        flow_engine::load_dag_with(path, &flow_stages::registry(), &self.set)
    }

    /// [`Ctx::load`], or the diagnostics printed and exit 2.
    pub fn load_or_report(&self, path: &Path) -> Result<Dag, Fail> {
        self.load(path).map_err(|diags| {
            report_diags(self, &diags);
            Fail::printed(Exit::Invalid)
        })
    }

    /// The cache, created if needed, in an engine context.
    pub fn open(&self) -> Result<Context, Fail> {
        let store = Store::open(&self.cache_dir).map_err(Fail::cache)?;
        Ok(self.context(store, false))
    }

    /// The cache for commands that only read it (`status`, `verify`, `compare`): works on a
    /// read-only cache and creates nothing.
    pub fn open_read_only(&self) -> Result<Context, Fail> {
        let store = Store::open_read_only(&self.cache_dir).map_err(Fail::cache)?;
        Ok(self.context(store, true))
    }

    /// The cache under its exclusive lock.
    pub fn open_locked(&self) -> Result<(Context, LockGuard), Fail> {
        let cx = self.open()?;
        let lock = cx.store.lock(&mut on_lock_event).map_err(Fail::cache)?;
        Ok((cx, lock))
    }

    fn context(&self, store: Store, read_only: bool) -> Context {
        // The torch worker's answer (libtorch version for keys) is kept between runs.
        flow_stages::worker::set_info_cache_dir(store.root().join("state"));
        Context::new(self.workspace.clone(), store, read_only)
    }

    /// Where user-facing commands may not write: the cache and `out/` (whose files are the
    /// cache's objects).
    pub fn check_user_output(&self, path: &Path) -> Result<(), Fail> {
        let resolved = resolved(path);
        let forbidden = [
            (self.cache_dir.clone(), "the cache"),
            (self.workspace.join("out"), "out/ (its files are the cache's objects)"),
        ];
        for (root, what) in forbidden {
            let root = std::fs::canonicalize(&root).unwrap_or(root);
            if resolved.starts_with(&root) {
                return Err(Fail::usage(format!(
                    "refusing to write {}: it is inside {what}; write it somewhere else",
                    path.display()
                )));
            }
        }
        Ok(())
    }

    /// Write a user-requested file (`--latex FILE`): never inside the cache or `out/`, and by
    /// tmp file + rename, so that an existing file's inode (which may be a hard link to a
    /// cache object) is never written through.
    pub fn write_user_file(&self, path: &Path, bytes: &[u8]) -> Result<(), Fail> {
        self.check_user_output(path)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| Fail::usage(format!("{} names no file", path.display())))?;
        let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
        let io = |e: std::io::Error| Fail::new(Exit::Failed, "io", format!("cannot write {}: {e}", path.display()));
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })
    }
}

/// `path` absolute, through every link that exists (a path not made yet: its parent resolved,
/// and so on up), so two spellings of one place compare equal.
pub fn resolved(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    if let Ok(p) = std::fs::canonicalize(&abs) {
        return p;
    }
    match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => resolved(dir).join(name),
        _ => abs,
    }
}

/// Diagnostics on stderr (or as JSON on stdout); exit 2.
pub fn report_diags(ctx: &Ctx, diags: &[Diagnostic]) -> Exit {
    if ctx.json {
        println!("{}", serde_json::json!({"ok": false, "diagnostics": diags}));
    } else {
        for d in diags {
            eprint!("{}", render_diag(d));
        }
    }
    Exit::Invalid
}

/// Said while waiting for the cache lock.
pub fn on_lock_event(e: LockEvent) {
    match e {
        LockEvent::Waiting { pid } => eprintln!(
            "waiting for another flow run on this cache{} …",
            pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
        ),
        LockEvent::TookOverStale { pid } => {
            eprintln!("note: took over the cache lock of pid {pid}, which is no longer running")
        }
    }
}

/// `1.5 MiB`.
pub fn human_size(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        b if b < 1024 * 1024 * 1024 => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
        b => format!("{:.2} GiB", b as f64 / (1024.0 * 1024.0 * 1024.0)),
    }
}

/// Pretty JSON on stdout.
pub fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap());
}
