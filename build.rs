// Gives the `flow` binary (and this package's tests) an rpath to libtorch and keeps
// libtorch_cuda linked when the `torch` feature is on; see stages/build/libtorch.rs.
include!("stages/build/libtorch.rs");

fn main() {
    flow_libtorch::run(&["build.rs", "stages/build/libtorch.rs"]);
}
