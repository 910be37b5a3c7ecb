//! Progress on stderr while a pipeline runs: one bar per running instance and an overall
//! bar on a terminal; one line per event otherwise; nothing but failures and warnings with
//! `--json` (whose output is the run summary on stdout).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use flow_engine::RunEvent;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Ui {
    mp: Option<MultiProgress>,
    bars: Mutex<std::collections::HashMap<String, ProgressBar>>,
    overall: Option<ProgressBar>,
    plain: bool,
}

impl Ui {
    pub fn new(json: bool) -> Ui {
        let tty = std::io::stderr().is_terminal();
        if tty && !json {
            let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let overall = mp.add(ProgressBar::new(0));
            overall.set_style(
                ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {pos}/{len} stages  {elapsed}")
                    .unwrap()
                    .progress_chars("=> "),
            );
            overall.set_prefix("flow");
            Ui {
                mp: Some(mp),
                bars: Mutex::new(Default::default()),
                overall: Some(overall),
                plain: false,
            }
        } else {
            Ui {
                mp: None,
                bars: Mutex::new(Default::default()),
                overall: None,
                plain: !json,
            }
        }
    }
    fn println(&self, s: String) {
        match &self.mp {
            Some(mp) => {
                let _ = mp.println(s);
            }
            None if self.plain => eprintln!("{s}"),
            None => {}
        }
    }
    pub fn event(&self, e: RunEvent) {
        match e {
            RunEvent::Planned { total } => {
                if let Some(o) = &self.overall {
                    o.set_length(total as u64);
                }
            }
            RunEvent::Cached { id } => {
                self.println(format!("  cached  {id}"));
                self.tick();
            }
            RunEvent::Started { id, threads, gpu, .. } => {
                let dev = gpu.map(|g| format!(", cuda:{g}")).unwrap_or_default();
                if let Some(mp) = &self.mp {
                    let pb = mp.add(ProgressBar::new(1000));
                    pb.set_style(ProgressStyle::with_template("  {spinner} {prefix:20} {wide_msg} {elapsed}").unwrap());
                    pb.set_prefix(id.clone());
                    pb.set_message(format!("({threads} threads{dev})"));
                    pb.enable_steady_tick(Duration::from_millis(120));
                    self.bars.lock().unwrap().insert(id, pb);
                } else {
                    self.println(format!("  run     {id} ({threads} threads{dev})"));
                }
            }
            RunEvent::Progress { id, frac, msg } => {
                if let Some(pb) = self.bars.lock().unwrap().get(&id) {
                    if frac >= 0.0 {
                        pb.set_message(format!("{:>3.0}% {msg}", frac * 100.0));
                    } else {
                        pb.set_message(msg);
                    }
                }
            }
            RunEvent::Finished { id, secs } => {
                if let Some(pb) = self.bars.lock().unwrap().remove(&id) {
                    pb.finish_and_clear();
                }
                self.println(format!("  done    {id} ({secs:.1}s)"));
                self.tick();
            }
            RunEvent::Failed { id, error, log } => {
                if let Some(pb) = self.bars.lock().unwrap().remove(&id) {
                    pb.finish_and_clear();
                }
                // Failures are shown even with --json (on stderr).
                let log = log
                    .map(|l| format!("\n          log: {}", l.display()))
                    .unwrap_or_default();
                let msg = format!("  FAILED  {id}: {error}{log}");
                if self.mp.is_some() || self.plain {
                    self.println(msg);
                } else {
                    eprintln!("{msg}");
                }
                self.tick();
            }
            RunEvent::Skipped { id } => {
                self.println(format!("  skipped {id}"));
            }
            RunEvent::Interrupted { id } => {
                if let Some(pb) = self.bars.lock().unwrap().remove(&id) {
                    pb.finish_and_clear();
                }
                self.println(format!(
                    "  interrupted {id} (nothing of it was published; a resumable stage keeps its checkpoint)"
                ));
            }
            RunEvent::Warning { message } => {
                // Shown even with --json (on stderr); also in the summary's `warnings`.
                let msg = format!("warning: {message}");
                if self.mp.is_some() || self.plain {
                    self.println(msg);
                } else {
                    eprintln!("{msg}");
                }
            }
        }
    }
    fn tick(&self) {
        if let Some(o) = &self.overall {
            o.inc(1);
        }
    }
    pub fn finish(&self) {
        if let Some(o) = &self.overall {
            o.finish_and_clear();
        }
    }
}
