//! `--set stage.param[.field…]=value`: a one-off change of a pipeline, applied to the text
//! of the file that declares the stage before it is parsed (DVC's `exp run -S`). The result
//! is exactly the pipeline the edited file would be — same typed params, same keys, same
//! "set in the pipeline" marks — and every error is the one that edit would give, shown on the
//! edited text (the file is named `p.ron (with --set …)`).
//!
//! `value` is RON (`3e-4`, `RealOnly`, `"x"`, `[1, 2]`). A param the declaration does not
//! write is inserted; a nested field (`train.model.width`) is changed inside the value the
//! declaration writes (`model: SimpleCnn(width: 24)`), which must then be written out.

use crate::ron_text::{fields, stage_open};

/// One `--set` argument.
#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    pub stage: String,
    /// `["lr"]`, `["model", "width"]`.
    pub path: Vec<String>,
    pub value: String,
    /// As typed.
    pub arg: String,
}

fn ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

impl Override {
    /// `stage.param[.field…]=value`.
    pub fn parse(arg: &str) -> Result<Override, String> {
        let bad = |why: &str| format!("--set {arg}: {why} (expected STAGE.PARAM=VALUE, e.g. train.lr=3e-4)");
        let (lhs, value) = arg.split_once('=').ok_or_else(|| bad("no `=`"))?;
        let value = value.trim();
        if value.is_empty() {
            return Err(bad("no value after `=`"));
        }
        let mut parts = lhs.trim().split('.');
        let stage = parts.next().unwrap_or("").to_string();
        let path: Vec<String> = parts.map(str::to_string).collect();
        if stage.is_empty() || !stage.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(bad("not a stage name before the first `.`"));
        }
        if path.is_empty() || !path.iter().all(|p| ident(p)) {
            return Err(bad("not a param name after the stage"));
        }
        Ok(Override {
            stage,
            path,
            value: value.to_string(),
            arg: arg.to_string(),
        })
    }
}

/// `text` with `o` applied to the declaration of its stage, or `None` when this file does not
/// declare the stage. `Err`: the path does not lead to a written value.
pub fn apply(text: &str, o: &Override) -> Option<Result<String, String>> {
    let mut open = stage_open(text, &o.stage)?;
    let mut k = 0;
    while k < o.path.len() {
        let name = &o.path[k];
        let fs = fields(text, open);
        let found = fs.iter().find(|f| &f.0 == name);
        let is_last = k + 1 == o.path.len();
        match (found, is_last) {
            (Some(&(_, v0, v1)), true) => {
                return Some(Ok(format!("{}{}{}", &text[..v0], o.value, &text[v1..])));
            }
            (None, true) => {
                let sep = if fs.is_empty() { "" } else { ", " };
                return Some(Ok(format!("{}{name}: {}{sep}{}", &text[..open + 1], o.value, &text[open + 1..])));
            }
            (Some(&(_, v0, v1)), false) => match text[v0..v1].find('(') {
                Some(p) => {
                    open = v0 + p;
                    // `model.SimpleCnn.width`: the variant's name may be spelled out.
                    if text[v0..open].trim() == o.path[k + 1] && k + 2 < o.path.len() {
                        k += 1;
                    }
                }
                None => {
                    return Some(Err(format!(
                        "--set {}: `{}` is `{}` in the pipeline, which has no field `{}`",
                        o.arg,
                        o.path[..=k].join("."),
                        &text[v0..v1],
                        o.path[k + 1]
                    )))
                }
            },
            (None, false) => {
                return Some(Err(format!(
                    "--set {}: the pipeline does not write `{}.{}`, so there is nothing to change inside it; write the whole value instead (--set {}.{}=…)",
                    o.arg,
                    o.stage,
                    o.path[..=k].join("."),
                    o.stage,
                    o.path[..=k].join(".")
                )))
            }
        }
        k += 1;
    }
    unreachable!("an override has at least one path component")
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = r#"Pipeline(name: "p", /* "train": X( */ stages: {
        "env": Exec(cmd: "x", env: {"train": "y"}, outputs: ["a"]),
        "train": Train(data: "pre", model: SimpleCnn(width: 24, pool: Max), // lr: 9
            lr: 3e-3, epochs: 16),
        "report": Report(predictions: "infer"),
    })"#;

    fn set(arg: &str) -> Result<String, String> {
        apply(P, &Override::parse(arg).unwrap()).unwrap()
    }

    #[test]
    fn values_are_replaced_inserted_and_nested() {
        assert!(set("train.lr=3e-4").unwrap().contains("lr: 3e-4, epochs: 16"));
        assert!(set("train.epochs=2").unwrap().contains("epochs: 2)"));
        assert!(set("train.model.width=8")
            .unwrap()
            .contains("SimpleCnn(width: 8, pool: Max)"));
        assert!(set("train.model.SimpleCnn.width=8")
            .unwrap()
            .contains("SimpleCnn(width: 8, pool: Max)"));
        assert!(set("train.model.pool=Avg")
            .unwrap()
            .contains("SimpleCnn(width: 24, pool: Avg)"));
        assert!(set("report.bootstrap=50")
            .unwrap()
            .contains("Report(bootstrap: 50, predictions"));
        assert!(set("train.batch_size=8").unwrap().contains("Train(batch_size: 8, data"));
        assert!(set("train.data.x=1").unwrap_err().contains("has no field `x`"));
        assert!(set("train.augment.hflip=0.5")
            .unwrap_err()
            .contains("does not write `train.augment`"));
        assert!(apply(P, &Override::parse("nope.lr=1").unwrap()).is_none());
        // A key that merely looks like the stage (in another stage's map, in a comment) is not it.
        let t = set("train.lr=1").unwrap();
        assert!(
            t.contains(r#"env: {"train": "y"}"#) && t.contains("lr: 1, epochs"),
            "{t}"
        );
        for bad in [
            "train",
            "train.lr",
            "train.lr=",
            ".lr=1",
            "train.=1",
            "a/b.lr=1",
            "train.1x=2",
        ] {
            assert!(Override::parse(bad).is_err(), "{bad}");
        }
    }
}
