// Gives this crate's test binaries an rpath to libtorch and keeps libtorch_cuda linked when
// the `torch` feature is on, and sets FLOW_LIBTORCH_VERSION for `torch_info`;
// see build/libtorch.rs (also included by the `flow` package's build script).
include!("build/libtorch.rs");

fn main() {
    flow_libtorch::run(&["build.rs", "build/libtorch.rs"]);
}
