//! Reading the *text* of a pipeline file where the parsed values cannot say it: which params
//! a declaration writes out (provenance), and where a value sits (`--set`). One scanner: it
//! skips strings, char literals and comments, and counts `()`, `[]`, `{}` nesting.

/// If a string or char literal or a comment starts at byte `i`, the byte after it.
pub fn skip_literal(text: &str, i: usize) -> Option<usize> {
    let b = text.as_bytes();
    match b[i] {
        b'/' if b.get(i + 1) == Some(&b'/') => Some(text[i..].find('\n').map_or(b.len(), |n| i + n)),
        b'/' if b.get(i + 1) == Some(&b'*') => Some(text[i + 2..].find("*/").map_or(b.len(), |n| i + 2 + n + 2)),
        q @ (b'"' | b'\'') => {
            // A raw string `r#"…"#` counts as a plain one: pipelines use none.
            let mut j = i + 1;
            while j < b.len() && b[j] != q {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            Some((j + 1).min(b.len()))
        }
        _ => None,
    }
}

/// The first `(` of `text` outside literals and comments.
pub fn first_paren(text: &str) -> Option<usize> {
    let mut i = 0;
    while i < text.len() {
        if let Some(j) = skip_literal(text, i) {
            i = j;
            continue;
        }
        if text.as_bytes()[i] == b'(' {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The fields written at depth 1 inside the bracket opening at `open`, in order: (name,
/// value start, value end). A field is an identifier followed by `:`.
pub fn fields(text: &str, open: usize) -> Vec<(String, usize, usize)> {
    let b = text.as_bytes();
    let (mut i, mut depth) = (open, 0usize);
    let mut out: Vec<(String, usize, usize)> = Vec::new();
    let (mut ident_at, mut last): (Option<usize>, Option<(usize, usize)>) = (None, None);
    let mut value_from: Option<usize> = None;
    let end_value = |out: &mut Vec<(String, usize, usize)>, from: Option<usize>, at: usize| {
        if let (Some(v), Some(f)) = (from, out.last_mut()) {
            f.2 = text[..at].trim_end().len().max(v);
        }
    };
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
        if let Some(j) = skip_literal(text, i) {
            last = None;
            i = j;
            continue;
        }
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                if depth == 1 {
                    end_value(&mut out, value_from.take(), i);
                }
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            b',' if depth == 1 => end_value(&mut out, value_from.take(), i),
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

/// The `(` of stage `name`'s `Kind(` in the `stages: { … }` map of the pipeline in `text`: a
/// key of that map itself, never a look-alike string in another stage's params or a comment.
pub fn stage_open(text: &str, name: &str) -> Option<usize> {
    let (_, v0, v1) = fields(text, first_paren(text)?).into_iter().find(|f| f.0 == "stages")?;
    if !text[v0..v1].starts_with('{') {
        return None;
    }
    let (mut i, mut depth) = (v0, 0usize);
    while i < v1 {
        if let Some(j) = skip_literal(text, i) {
            let key = text.get(i + 1..j.saturating_sub(1)).unwrap_or("");
            let rest = text[j..].trim_start();
            if depth == 1 && text.as_bytes()[i] == b'"' && key == name && rest.starts_with(':') {
                let after = text.len() - rest.len() + 1;
                return first_paren(&text[after..]).map(|p| after + p);
            }
            i = j;
            continue;
        }
        match text.as_bytes()[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}
