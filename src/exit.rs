//! Exit codes and command failures: the README's contract for scripts.
//!
//! 0 ok · 1 a stage failed (or the command found a problem: damage, stale experiments) ·
//! 2 invalid pipeline or usage · 130 interrupted.

/// How `flow` exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// A stage failed, or the command found what it reports (verify: damage; compare: stale).
    Failed = 1,
    /// An invalid pipeline, bad arguments, or a cache that cannot be opened.
    Invalid = 2,
    /// Ctrl-C: running stages were stopped; finished ones stay cached.
    Interrupted = 130,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

/// A command that could not do its job: `error: <message>` on stderr, or with `--json`
/// `{"ok": false, "error": <message>, "code": <code>, "exit": <exit>}` on stdout.
#[derive(Debug)]
pub struct Fail {
    pub exit: Exit,
    /// Stable, kebab-case: `usage`, `cache`, `io`, `stale`, `compare`, `stage`, `engine`.
    code: &'static str,
    message: String,
}

impl Fail {
    pub fn new(exit: Exit, code: &'static str, message: impl Into<String>) -> Fail {
        Fail {
            exit,
            code,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Fail {
        Fail::new(Exit::Invalid, "usage", message)
    }

    pub fn cache(e: impl std::fmt::Display) -> Fail {
        Fail::new(Exit::Invalid, "cache", e.to_string())
    }

    /// A failure whose message was already shown (diagnostics): nothing more is printed.
    pub fn printed(exit: Exit) -> Fail {
        Fail::new(exit, "printed", "")
    }

    pub fn print(&self, json: bool) {
        if self.code == "printed" {
            return;
        }
        if json {
            println!(
                "{}",
                serde_json::json!({"ok": false, "error": self.message, "code": self.code, "exit": self.exit as u8})
            );
        } else {
            eprintln!("error: {}", self.message);
        }
    }
}
