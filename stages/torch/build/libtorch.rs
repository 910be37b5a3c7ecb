// Shared by the build scripts of the `flow` binary (/build.rs) and of flow-stages
// (/stages/build.rs) through `include!`, so that every binary or test that links libtorch
// starts without LD_LIBRARY_PATH.
//
// torch-sys compiles its C++ shim and emits `-l torch_cpu -l torch -l c10 ...`, but it gives
// the final executables no rpath, and the default `--as-needed` link drops `libtorch_cuda.so`
// (nothing references its symbols; it registers the CUDA backend from a static initialiser),
// so on a GPU host CUDA would silently be unavailable (tch-rs issues #907, #980). And
// `cargo:rustc-link-arg` only reaches the targets of the package whose build script prints
// it, hence one build script per package that has torch-linked binaries or tests.
//
// The libtorch directory is found exactly the way torch-sys 0.26 finds it:
//   1. LIBTORCH_USE_PYTORCH set: ask the python interpreter torch-sys runs (`python` when
//      VIRTUAL_ENV is set, else `python3`, looked up on PATH).
//   2. else LIBTORCH (the repo's .cargo/config.toml points it at .venv/libtorch, which
//      scripts/setup creates), with LIBTORCH_LIB overriding the parent of `lib/`.
//   3. else a system install (/usr/lib/libtorch.so).
// Used by the build script of flow-stages-torch (the only package that links libtorch).

#[allow(dead_code)]
mod flow_libtorch {
    use std::env;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const PROBE: &str = "import os, torch\n\
from torch.utils import cpp_extension\n\
print('FLOW_TORCH_VERSION:', torch.__version__)\n\
for p in cpp_extension.library_paths():\n    print('FLOW_TORCH_LIB:', p)\n";

    struct Found {
        lib_dir: PathBuf,
        version: Option<String>,
        /// A file whose change means libtorch was replaced (for rerun-if-changed).
        stamp: Option<PathBuf>,
    }

    fn var(name: &str) -> Option<String> {
        println!("cargo:rerun-if-env-changed={name}");
        env::var(name).ok()
    }

    fn from_python() -> Result<Found, String> {
        let python = if env::var_os("VIRTUAL_ENV").is_some() { "python" } else { "python3" };
        let out = Command::new(python)
            .arg("-c")
            .arg(PROBE)
            .output()
            .map_err(|e| format!("cannot run `{python}`: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut lib_dir = None;
        let mut version = None;
        for line in stdout.lines() {
            if let Some(v) = line.strip_prefix("FLOW_TORCH_VERSION: ") {
                version = Some(v.trim().to_string());
            }
            if let Some(p) = line.strip_prefix("FLOW_TORCH_LIB: ") {
                lib_dir.get_or_insert_with(|| PathBuf::from(p.trim()));
            }
        }
        match lib_dir {
            Some(lib_dir) => {
                let stamp = Some(lib_dir.join("..").join("version.py")).filter(|p| p.exists());
                Ok(Found { lib_dir, version, stamp })
            }
            None => Err(format!(
                "`{python} -c 'import torch'` gave no library path (status {}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
            )),
        }
    }

    /// Version of the libtorch rooted at `root` (the parent of `lib/`): libtorch zips carry
    /// `build-version` (scripts/setup writes one into .venv/libtorch too), the pip wheel
    /// `version.py`, and both the C++ header.
    fn version_at(root: &Path) -> (Option<String>, Option<PathBuf>) {
        let bv = root.join("build-version");
        if let Ok(s) = std::fs::read_to_string(&bv) {
            if !s.trim().is_empty() {
                return (Some(s.trim().to_string()), Some(bv));
            }
        }
        let vp = root.join("version.py");
        if let Ok(s) = std::fs::read_to_string(&vp) {
            for line in s.lines() {
                if let Some(rest) = line.strip_prefix("__version__") {
                    let v = rest.trim_start_matches([' ', '=']).trim().trim_matches(['\'', '"']);
                    if !v.is_empty() {
                        return (Some(v.to_string()), Some(vp));
                    }
                }
            }
        }
        for h in ["include/torch/headeronly/version.h", "include/torch/version.h"] {
            let h = root.join(h);
            if let Ok(s) = std::fs::read_to_string(&h) {
                // #define TORCH_VERSION \
                //   "2.13.0"
                if let Some(i) = s.find("#define TORCH_VERSION ") {
                    let rest = &s[i..];
                    if let Some(q) = rest.find('"') {
                        if let Some(e) = rest[q + 1..].find('"') {
                            return (Some(rest[q + 1..q + 1 + e].to_string()), Some(h));
                        }
                    }
                }
            }
        }
        (None, None)
    }

    fn locate() -> Result<Found, String> {
        if var("LIBTORCH_USE_PYTORCH").is_some() {
            var("VIRTUAL_ENV");
            return from_python();
        }
        let root = match var("LIBTORCH") {
            Some(p) => PathBuf::from(p),
            None if Path::new("/usr/lib/libtorch.so").exists() => PathBuf::from("/usr"),
            None => {
                return Err("neither LIBTORCH nor LIBTORCH_USE_PYTORCH is set and there is no \
                            /usr/lib/libtorch.so; run scripts/setup (the repo's \
                            .cargo/config.toml points LIBTORCH at .venv/libtorch)"
                    .into())
            }
        };
        let lib_dir = var("LIBTORCH_LIB").map(PathBuf::from).unwrap_or_else(|| root.clone()).join("lib");
        if !lib_dir.exists() {
            return Err(format!("libtorch lib dir {} does not exist; run scripts/setup", lib_dir.display()));
        }
        let (mut version, mut stamp) = version_at(&root);
        if version.is_none() {
            // LIBTORCH may be a symlink farm (.venv/libtorch): look next to the real lib dir.
            if let Some(real_root) = std::fs::canonicalize(&lib_dir).ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
                (version, stamp) = version_at(&real_root);
            }
        }
        Ok(Found { lib_dir, version, stamp })
    }

    /// Directories the executable's rpath gets: libtorch's lib dir, and for a pip wheel the
    /// `site-packages/nvidia/*/lib` dirs (torch's own libraries carry an RPATH to them, this
    /// only makes the executable independent of that).
    fn rpath_dirs(lib_dir: &Path) -> Vec<PathBuf> {
        let lib_dir = std::fs::canonicalize(lib_dir).unwrap_or_else(|_| lib_dir.to_path_buf());
        let mut dirs = vec![lib_dir.clone()];
        if let Some(site) = lib_dir.parent().and_then(Path::parent) {
            if let Ok(rd) = std::fs::read_dir(site.join("nvidia")) {
                let mut nv: Vec<PathBuf> =
                    rd.filter_map(|e| e.ok()).map(|e| e.path().join("lib")).filter(|p| p.is_dir()).collect();
                nv.sort();
                dirs.extend(nv);
            }
        }
        dirs
    }

    /// `own_files`: the calling build script and this file, relative to its package root.
    /// `link_arg`: the cargo directive the link flags go to — `cargo:rustc-link-arg` (every
    /// target of the package) or `cargo:rustc-link-arg-bin=flow-worker` (that binary only).
    pub fn run(own_files: &[&str], link_arg: &str) {
        for f in own_files {
            println!("cargo:rerun-if-changed={f}");
        }
        let found = match locate() {
            Ok(f) => f,
            Err(e) => {
                println!("cargo:warning=flow: cannot locate libtorch for the rpath: {e}");
                println!("cargo:rustc-env=FLOW_LIBTORCH_VERSION=unknown");
                return;
            }
        };
        if let Some(stamp) = &found.stamp {
            println!("cargo:rerun-if-changed={}", stamp.display());
        }
        let dirs = rpath_dirs(&found.lib_dir);
        for d in &dirs {
            let d = d.display().to_string();
            if d.contains(',') {
                println!("cargo:warning=flow: libtorch path {d} contains a comma; not added to the rpath");
                continue;
            }
            println!("{link_arg}=-Wl,-rpath,{d}");
        }
        let lib = &dirs[0];
        if lib.join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-search=native={}", lib.display());
            println!("{link_arg}=-Wl,--no-as-needed");
            println!("{link_arg}=-ltorch_cuda");
            println!("{link_arg}=-Wl,--as-needed");
        }
        println!(
            "cargo:rustc-env=FLOW_LIBTORCH_VERSION={}",
            found.version.as_deref().unwrap_or("unknown")
        );
        println!("cargo:rustc-env=FLOW_LIBTORCH_LIB={}", lib.display());
    }
}
