// Gives this crate's binary (`flow-worker`) and tests an rpath to libtorch, keeps
// libtorch_cuda linked (so CUDA is not silently lost on GPU hosts) and sets
// FLOW_LIBTORCH_VERSION; see build/libtorch.rs.
include!("build/libtorch.rs");

fn main() {
    flow_libtorch::run(&["build.rs", "build/libtorch.rs"], "cargo:rustc-link-arg");
}
