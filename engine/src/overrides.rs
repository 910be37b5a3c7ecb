//! `--set stage.param[.field…]=value`: a one-off change of a pipeline, applied to the text
//! of the file that declares the stage before it is parsed (DVC's `exp run -S`). The result
//! is exactly the pipeline the edited file would be — same typed params, same keys, same
//! "set in the pipeline" marks — and every error is the one that edit would give, shown on the
//! edited text (the file is named `p.ron (with --set …)`).
//!
//! `value` is RON (`3e-4`, `RealOnly`, `"x"`, `[1, 2]`). A param the declaration does not
//! write is inserted; a nested field (`train.model.width`) is changed inside the value the
//! declaration writes (`model: SimpleCnn(width: 24)`), which must then be written out.

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

/// The fields written at depth 1 inside the parentheses opening at `open`: (name, value
/// start, value end), skipping strings, char literals and comments.
fn fields(text: &str, open: usize) -> Vec<(String, usize, usize)> {
    let b = text.as_bytes();
    let (mut i, mut depth) = (open, 0usize);
    let mut out: Vec<(String, usize, usize)> = Vec::new();
    let mut ident_at: Option<usize> = None;
    let mut last: Option<(usize, usize)> = None;
    let mut value_from: Option<usize> = None;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_alphanumeric() || c == b'_' {
            ident_at.get_or_insert(i);
            i += 1;
            continue;
        }
        if let Some(s) = ident_at.take() {
            last = Some((s, i));
        }
        match c {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                i = text[i..].find('\n').map_or(b.len(), |n| i + n);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = text[i + 2..].find("*/").map_or(b.len(), |n| i + 2 + n + 2);
                continue;
            }
            b'"' | b'\'' => {
                let q = c;
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                if depth == 1 {
                    if let (Some(v), Some(f)) = (value_from.take(), out.last_mut()) {
                        f.2 = text[..i].trim_end().len().max(v);
                    }
                }
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            b',' if depth == 1 => {
                if let (Some(v), Some(f)) = (value_from.take(), out.last_mut()) {
                    f.2 = text[..i].trim_end().len().max(v);
                }
            }
            b':' if depth == 1 && value_from.is_none() => {
                if let Some((s, e)) = last.take() {
                    let v = i + 1 + (text[i + 1..].len() - text[i + 1..].trim_start().len());
                    out.push((text[s..e].to_string(), v, v));
                    value_from = Some(v);
                }
            }
            _ => {}
        }
        if !c.is_ascii_whitespace() {
            last = None;
        }
        i += 1;
    }
    out
}

/// The first `(` of `text` outside comments and strings (the `Pipeline(`).
fn first_paren(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => i = text[i..].find('\n').map_or(b.len(), |n| i + n),
            b'/' if b.get(i + 1) == Some(&b'*') => i = text[i + 2..].find("*/").map_or(b.len(), |n| i + 2 + n + 2),
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'(' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// The `(` of stage `name`'s `Kind(` in the `stages: { … }` map of the pipeline in `text`:
/// a key of that map itself, never a string that merely looks like one elsewhere.
fn stage_open(text: &str, name: &str) -> Option<usize> {
    let (_, v0, v1) = fields(text, first_paren(text)?).into_iter().find(|f| f.0 == "stages")?;
    if !text[v0..v1].starts_with('{') {
        return None;
    }
    let b = text.as_bytes();
    let (mut i, mut depth) = (v0, 0usize);
    while i < v1 {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                i = text[i..].find('\n').map_or(b.len(), |n| i + n);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = text[i + 2..].find("*/").map_or(b.len(), |n| i + 2 + n + 2);
                continue;
            }
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                let key = &text[start..i.min(b.len())];
                let rest = text.get(i + 1..)?.trim_start();
                if depth == 1 && key == name && rest.starts_with(':') {
                    let after = text.len() - rest.len() + 1;
                    return text[after..].find('(').map(|p| after + p);
                }
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// `text` with `o` applied to the declaration of its stage, or `None` when this file does not
/// declare the stage. `Err`: the path does not lead to a written value.
pub fn apply(text: &str, o: &Override) -> Option<Result<String, String>> {
    let mut open = stage_open(text, &o.stage)?;
    for (k, name) in o.path.iter().enumerate() {
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
                Some(p) => open = v0 + p,
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
