//! `flow-worker`: runs libtorch-backed stage instances for `flow`. Started by `flow`, not by
//! hand. `flow-worker doctor` prints what libtorch can do here, as JSON.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("doctor") => {
            let info = flow_stages_torch::torch_info();
            println!("{}", serde_json::to_string(&info).expect("json"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: flow-worker doctor\n(flow-worker is started by flow; it is not meant to be run by hand)");
            ExitCode::from(2)
        }
    }
}
