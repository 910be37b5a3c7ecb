//! `flow-worker`: runs libtorch-backed stage instances for `flow`. Started by `flow`, not by
//! hand. `flow-worker doctor` prints what libtorch can do here, as JSON; `flow-worker run
//! <spec.json>` runs one stage instance: progress as JSON lines on stdout, a log on stderr,
//! and on failure `error: <message>` as the last stderr line and exit status 1.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("doctor") => {
            let info = flow_stages_torch::torch_info();
            println!("{}", serde_json::to_string(&info).expect("json"));
            ExitCode::SUCCESS
        }
        Some("run") if args.len() == 2 => {
            let path = std::path::PathBuf::from(&args[1]);
            // libtorch reports many errors as panics; they fail the instance with a message.
            std::panic::set_hook(Box::new(|_| {}));
            let res = std::panic::catch_unwind(|| flow_stages_torch::run::run_spec_file(&path));
            let msg = match res {
                Ok(Ok(())) => return ExitCode::SUCCESS,
                Ok(Err(e)) => e,
                Err(p) => {
                    let text = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "unknown panic".into());
                    eprintln!("{text}");
                    format!("flow-worker crashed: {}", flow_stages_torch::util::one_line(&text))
                }
            };
            eprintln!("error: {}", msg.replace('\n', " "));
            ExitCode::from(1)
        }
        _ => {
            eprintln!(
                "usage: flow-worker doctor | flow-worker run <spec.json>\n(flow-worker is started by flow; it is not meant to be run by hand)"
            );
            ExitCode::from(2)
        }
    }
}
