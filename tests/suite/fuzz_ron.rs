//! Fuzzing the RON front end: mutated and generated pipeline files go through the loading
//! path `flow check` uses (`load_pipeline` + `build_dag`, i.e. `flow_engine::load_dag`), and
//! every diagnostic is rendered as the binary renders it.
//!
//! Properties: no panic (nor stack overflow: the loop runs on a thread with the main thread's
//! 8 MiB stack); on error every diagnostic has a non-empty message, its file, a source, a span
//! inside that source on char boundaries and a line:col ≥ 1:1 that is the span's start.
//!
//! Deterministic: `FLOW_FUZZ_SEED` (default fixed) seeds the run, `FLOW_FUZZ_CASES` sets the
//! number of cases (default keeps the test to a few seconds in release). A failing case is
//! saved under `target/tmp/fuzz_ron/` and the message says how to rerun just it
//! (`FLOW_FUZZ_SEED=… FLOW_FUZZ_ONLY=<case>`). A stack overflow aborts the process: the case
//! it died on is the `case.ron` (and its neighbours) left in `target/tmp/fuzz_ron/t<thread>/`.

#[path = "../../src/render.rs"]
#[allow(dead_code)]
mod render;

use crate::common;
use common::{env_u64, Rng};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use flow_engine::{Diagnostic, Registry};

fn case_seed(master: u64, case: u64) -> u64 {
    Rng::new(master ^ case.wrapping_mul(0xA24B_AED4_963E_E407)).next()
}

// ---------- corpus ----------

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn ron_files(dir: &Path, recurse: bool, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    v.sort();
    for p in v {
        if p.is_dir() && recurse {
            ron_files(&p, true, out);
        } else if p.extension().is_some_and(|x| x == "ron") {
            out.push(p);
        }
    }
}

fn corpus() -> Vec<Vec<u8>> {
    let mut files = Vec::new();
    ron_files(&root().join("pipelines"), false, &mut files);
    ron_files(&root().join("examples"), true, &mut files);
    ron_files(&root().join("tests/fixtures/invalid"), false, &mut files);
    assert!(files.len() >= 10, "corpus too small: {files:?}");
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

// ---------- mutations ----------

const TOKENS: &[&str] = &[
    "(",
    ")",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "'",
    "//",
    "/*",
    "*/",
    "r#\"",
    "\"#",
    "#",
    "1e999",
    "-1e999",
    "-0",
    "0x",
    "0xFFFFFFFFFFFFFFFFFFFF",
    "18446744073709551616",
    "-9223372036854775809",
    "340282366920938463463374607431768211456",
    "4294967295",
    "NaN",
    "inf",
    "1.",
    ".5",
    "Some(",
    "None",
    "true",
    "()",
    "b\"\\xff\"",
    "\\",
    "\\u{110000}",
    "\\u{",
    "é",
    "日本",
    "🦀",
    "e\u{301}",
    "\u{301}",
    "\u{200b}",
    "\u{feff}",
    "\u{0}",
    "\r\n",
    "\r",
    "\n",
    "\t",
    " ",
    "@",
    "..",
    "/",
    "#![enable(implicit_some)]",
    "#![enable(unwrap_newtypes)]",
    "Pipeline(",
    "stages:",
    "extends:",
    "defaults:",
    "name:",
    "Exec(",
    "Split(",
    "Train(",
    "Stage(",
    "Path(",
    "\"../x\"",
    "\"/abs\"",
    "\"\"",
    "{fold}",
    "folds:",
];

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "7",
    "-0",
    "1e999",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "99999999999999999999999",
    "1.5",
    "NaN",
    "0b1",
    "0o7",
    "0xff",
    "1_000",
];

fn is_char_boundary(b: &[u8], i: usize) -> bool {
    i == 0 || i >= b.len() || (b[i] as i8) >= -0x40
}

/// A byte index, mostly on a char boundary (so most mutants stay UTF-8).
fn pos(rng: &mut Rng, b: &[u8]) -> usize {
    let mut i = rng.below(b.len() + 1);
    if rng.chance(15, 16) {
        while !is_char_boundary(b, i) {
            i -= 1;
        }
    }
    i
}

/// Byte spans of string literals `"…"` (no escapes handled beyond `\"`).
fn string_lits(b: &[u8]) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            let s = i;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            if i < b.len() {
                v.push((s, i + 1));
            }
        }
        i += 1;
    }
    v
}

/// Spans of stage entries `"name": Kind(…),` (up to the matching `)` and its comma).
fn stage_entries(b: &[u8]) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    for (s, e) in string_lits(b) {
        let mut i = e;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() || b[i] != b':' {
            continue;
        }
        // find the first `(` then its match
        let mut depth = 0usize;
        let mut in_str = false;
        let mut j = i + 1;
        let mut end = None;
        while j < b.len() {
            let c = b[j];
            if in_str {
                if c == b'\\' {
                    j += 1;
                } else if c == b'"' {
                    in_str = false;
                }
            } else if c == b'"' {
                in_str = true;
            } else if c == b'(' || c == b'[' || c == b'{' {
                depth += 1;
            } else if c == b')' || c == b']' || c == b'}' {
                if depth == 0 {
                    break;
                }
                depth -= 1;
                if depth == 0 {
                    end = Some(j + 1);
                    break;
                }
            } else if c == b',' && depth == 0 {
                break;
            }
            j += 1;
        }
        if let Some(mut end) = end {
            if end < b.len() && b[end] == b',' {
                end += 1;
            }
            v.push((s, end));
        }
    }
    v
}

fn names_in(b: &[u8]) -> Vec<Vec<u8>> {
    stage_entries(b)
        .iter()
        .filter_map(|&(s, _)| {
            let e = string_lits(&b[s..]).first()?.1;
            Some(b[s + 1..s + e - 1].to_vec())
        })
        .collect()
}

fn mutate_once(rng: &mut Rng, b: &mut Vec<u8>, files: &mut Vec<(String, Vec<u8>)>, corpus: &[Vec<u8>]) {
    match rng.below(16) {
        // delete a byte / a char / a range
        0 => {
            if !b.is_empty() {
                let i = pos(rng, b).min(b.len() - 1);
                let n = if rng.chance(1, 2) { 1 } else { 1 + rng.below(16) };
                b.drain(i..(i + n).min(b.len()));
            }
        }
        // insert a RON-significant token
        1..=3 => {
            let t = rng.pick(TOKENS).as_bytes().to_vec();
            let i = pos(rng, b);
            b.splice(i..i, t);
        }
        // a random byte
        4 => {
            let i = pos(rng, b);
            let c = rng.next() as u8;
            b.insert(i, c);
        }
        // swap two tokens (whitespace-separated chunks)
        5 => {
            let words: Vec<(usize, usize)> = chunks(b);
            if words.len() >= 2 {
                let a = *rng.pick(&words);
                let c = *rng.pick(&words);
                let (x, y) = if a.0 < c.0 { (a, c) } else { (c, a) };
                if x.1 <= y.0 {
                    let mut out = b[..x.0].to_vec();
                    out.extend_from_slice(&b[y.0..y.1]);
                    out.extend_from_slice(&b[x.1..y.0]);
                    out.extend_from_slice(&b[x.0..x.1]);
                    out.extend_from_slice(&b[y.1..]);
                    *b = out;
                }
            }
        }
        // truncate
        6 => {
            let i = pos(rng, b);
            b.truncate(i);
        }
        // duplicate a stage entry
        7 => {
            let es = stage_entries(b);
            if !es.is_empty() {
                let (s, e) = *rng.pick(&es);
                let copy = b[s..e].to_vec();
                let at = if rng.chance(1, 2) { e } else { s };
                b.splice(at..at, copy);
            }
        }
        // replace a string literal naming a stage by another stage name (cycles, missing refs,
        // fold mismatches) or a near miss
        8 | 9 => {
            let names = names_in(b);
            let lits = string_lits(b);
            if !names.is_empty() && !lits.is_empty() {
                let (s, e) = *rng.pick(&lits);
                let mut n = rng.pick(&names).clone();
                match rng.below(6) {
                    0 => n.push(b'x'),
                    1 => n = b"".to_vec(),
                    2 => n.extend_from_slice("é".as_bytes()),
                    3 => n = b"a@fold0".to_vec(),
                    _ => {}
                }
                let mut lit = vec![b'"'];
                lit.extend(n);
                lit.push(b'"');
                b.splice(s..e, lit);
            }
        }
        // replace a number
        10 => {
            let nums = numbers(b);
            if !nums.is_empty() {
                let (s, e) = *rng.pick(&nums);
                b.splice(s..e, rng.pick(NUMBERS).bytes());
            }
        }
        // deep nesting
        11 => {
            let open = *rng.pick(&["(", "[", "{", "Some(", "Exec(", "[(", "{\"a\":"]);
            let n = *rng.pick(&[10usize, 100, 127, 128, 129, 200, 1000, 20000]);
            let i = pos(rng, b);
            let mut ins = open.repeat(n).into_bytes();
            if rng.chance(1, 2) {
                let close: String = open
                    .chars()
                    .rev()
                    .filter_map(|c| match c {
                        '(' => Some(')'),
                        '[' => Some(']'),
                        '{' => Some('}'),
                        _ => None,
                    })
                    .collect();
                ins.extend(close.repeat(n).into_bytes());
            }
            b.splice(i..i, ins);
        }
        // `extends`: itself, missing, broken, a loop back, a directory, a mutated base
        12 => {
            let target = match rng.below(9) {
                0 => "case.ron".to_string(),
                1 => "missing.ron".to_string(),
                2 => "bad.ron".to_string(),
                3 => "loop.ron".to_string(),
                4 => "sub".to_string(),
                5 => "".to_string(),
                6 => "../t0/base.ron".to_string(),
                7 => "base.ron".to_string(),
                _ => {
                    let mut m = rng.pick(corpus).clone();
                    for _ in 0..1 + rng.below(3) {
                        let mut none = Vec::new();
                        mutate_once(rng, &mut m, &mut none, corpus);
                    }
                    files.push(("mbase.ron".into(), m));
                    "mbase.ron".to_string()
                }
            };
            set_extends(b, &target);
        }
        // CRLF everywhere / BOM / NUL
        13 => match rng.below(3) {
            0 => {
                let s = String::from_utf8_lossy(b).replace('\n', "\r\n");
                *b = s.into_bytes();
            }
            1 => b.splice(0..0, "\u{feff}".bytes()).for_each(drop),
            _ => {
                let i = pos(rng, b);
                b.insert(i, 0);
            }
        },
        // splice in a chunk of another corpus file
        14 => {
            let o = rng.pick(corpus);
            if !o.is_empty() {
                let s = pos(rng, o).min(o.len());
                let e = (s + rng.below(64)).min(o.len());
                let i = pos(rng, b);
                b.splice(i..i, o[s..e].iter().copied());
            }
        }
        // multi-byte chars inside names and strings
        _ => {
            let lits = string_lits(b);
            if !lits.is_empty() {
                let (s, e) = *rng.pick(&lits);
                let at = s + 1 + rng.below(e - s - 1);
                let at = if is_char_boundary(b, at) { at } else { s + 1 };
                let t = *rng.pick(&["é", "e\u{301}", "日本", "🦀", "\u{202e}", "\u{0}", "\\n", "\\\"", "\t"]);
                b.splice(at..at, t.bytes());
            }
        }
    }
}

fn chunks(b: &[u8]) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let s = i;
        while i < b.len() && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i > s {
            v.push((s, i));
        }
    }
    v
}

fn numbers(b: &[u8]) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
            v.push((s, i));
        } else {
            i += 1;
        }
    }
    v
}

fn set_extends(b: &mut Vec<u8>, target: &str) {
    let lit = format!("extends: \"{target}\",");
    let s = String::from_utf8_lossy(b).to_string();
    if let Some(p) = s.find("extends:") {
        let end = s[p..].find(',').map_or(s.len(), |e| p + e + 1);
        *b = format!("{}{lit}{}", &s[..p], &s[end..]).into_bytes();
    } else if let Some(p) = s.find("Pipeline(") {
        let at = p + "Pipeline(".len();
        *b = format!("{}\n    {lit}{}", &s[..at], &s[at..]).into_bytes();
    } else {
        b.splice(0..0, lit.bytes());
    }
}

// ---------- generated pipelines ----------

fn generate(rng: &mut Rng) -> Vec<u8> {
    let pool = ["a", "b", "c", "d", "e", "f", "train", "split", "a-b", "a_b", "x1"];
    let n = rng.below(8);
    let names: Vec<&str> = (0..n).map(|_| *rng.pick(&pool)).collect();
    let mut s = String::from("Pipeline(\n    name: \"gen\",\n");
    if rng.chance(1, 4) {
        s.push_str("    defaults: (seed: 1, threads: 2),\n");
    }
    s.push_str("    stages: {\n");
    for (i, name) in names.iter().enumerate() {
        let mut inputs = Vec::new();
        for _ in 0..rng.below(4) {
            let r = match rng.below(10) {
                0 => "nope".to_string(),
                1 => name.to_string(), // self-loop
                2 => format!(
                    "Path(\"{}\")",
                    rng.pick(&["pipelines", "../up", "/abs", "", "a/../..", "./x"])
                ),
                _ => rng.pick(&pool[..]).to_string(),
            };
            if r.starts_with("Path(") {
                inputs.push(r);
            } else {
                inputs.push(format!("Stage(\"{r}\")"));
            }
        }
        // forward references only to names declared earlier: a DAG, sometimes broken on purpose
        if rng.chance(1, 2) && i > 0 {
            inputs.push(format!("Stage(\"{}\")", names[rng.below(i)]));
        }
        let folds = match rng.below(6) {
            0 => ", folds: 2".to_string(),
            1 => ", folds: 3".to_string(),
            2 => ", folds: 0".to_string(),
            _ => String::new(),
        };
        let outputs = rng.pick(&["[\"o\"]", "[]", "[\"../o\"]", "[\"o{fold}\"]", "[\"/o\"]"]);
        let produces = if rng.chance(1, 5) { ", produces: \"models\"" } else { "" };
        s.push_str(&format!(
            "        \"{name}\": Exec(cmd: \"true\", inputs: [{}], outputs: {outputs}{folds}{produces}),\n",
            inputs.join(", ")
        ));
    }
    s.push_str("    },\n)\n");
    s.into_bytes()
}

// ---------- one case ----------

struct Case {
    /// Files to write next to `case.ron` (name, bytes); `case.ron` first.
    files: Vec<(String, Vec<u8>)>,
}

fn make_case(seed: u64, corpus: &[Vec<u8>]) -> Case {
    let mut rng = Rng::new(seed);
    let mut files = Vec::new();
    let mut b = if rng.chance(1, 5) {
        generate(&mut rng)
    } else {
        rng.pick(corpus).clone()
    };
    let rounds = match rng.below(4) {
        0 => 0,
        1 => 1,
        2 => 1 + rng.below(3),
        _ => 1 + rng.below(10),
    };
    for _ in 0..rounds {
        mutate_once(&mut rng, &mut b, &mut files, corpus);
    }
    files.insert(0, ("case.ron".to_string(), b));
    Case { files }
}

/// Files every case directory has: a valid base, a broken one, one that extends the case
/// back (an `extends` cycle through two files), a directory.
fn setup_dir(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(
        dir.join("base.ron"),
        std::fs::read(root().join("examples/compare/base.ron")).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("bad.ron"),
        std::fs::read(root().join("tests/fixtures/invalid/syntax_error.ron")).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("loop.ron"),
        "Pipeline(name: \"loop\", extends: \"case.ron\", stages: {})\n",
    )
    .unwrap();
}

/// Check one diagnostic; `Err` says what is wrong with it.
fn check_diag(d: &Diagnostic) -> Result<(), String> {
    if d.message.trim().is_empty() {
        return Err("empty message".into());
    }
    let Some(src) = &d.source else {
        return Err("no source (no position)".into());
    };
    if d.file != src.path {
        return Err(format!(
            "file {} is not its source's {}",
            d.file.display(),
            src.path.display()
        ));
    }
    if d.file.as_os_str().is_empty() {
        return Err("no file".into());
    }
    if d.line < 1 || d.col < 1 {
        return Err(format!("position {}:{}", d.line, d.col));
    }
    let text = &src.text;
    let (s, len) = d.span;
    let Some(e) = s.checked_add(len) else {
        return Err(format!("span {:?} overflows", d.span));
    };
    if e > text.len() {
        return Err(format!("span {:?} past the end ({} bytes)", d.span, text.len()));
    }
    if !text.is_char_boundary(s) || !text.is_char_boundary(e) {
        return Err(format!("span {:?} not on char boundaries", d.span));
    }
    if src.line_col(s) != (d.line, d.col) {
        return Err(format!(
            "line:col {}:{} is not the span's {:?}",
            d.line,
            d.col,
            src.line_col(s)
        ));
    }
    if src.offset_of(d.line, d.col) != s {
        return Err(format!(
            "offset_of({}, {}) = {} is not the span's start {s}",
            d.line,
            d.col,
            src.offset_of(d.line, d.col)
        ));
    }
    // The rendered diagnostic names the position.
    let r = render::render_diag(d);
    if !r.contains(&format!("{}:{}", d.line, d.col)) {
        return Err(format!("rendering lacks {}:{}:\n{r}", d.line, d.col));
    }
    Ok(())
}

fn run_case(dir: &Path, case: &Case, registry: &Registry) -> Result<(), String> {
    // Leftovers of an earlier case.
    let _ = std::fs::remove_file(dir.join("mbase.ron"));
    for (name, bytes) in &case.files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let path = dir.join("case.ron");
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let r = flow_engine::load_dag(&path, registry);
        match r {
            Ok(_) => Ok(()),
            Err(diags) => {
                if diags.is_empty() {
                    return Err("Err with no diagnostic".to_string());
                }
                for d in &diags {
                    check_diag(d).map_err(|m| format!("{m}\n  diagnostic: {d:?}"))?;
                }
                Ok(())
            }
        }
    }));
    match res {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panic: {msg}"))
        }
    }
}

#[test]
fn ron_front_end_never_panics_and_every_error_has_a_position() {
    let master = env_u64("FLOW_FUZZ_SEED").unwrap_or(0x5EED_F10E);
    // A few seconds either way (debug builds are ~10x slower).
    let default_cases = if cfg!(debug_assertions) { 400 } else { 3000 };
    let cases = env_u64("FLOW_FUZZ_CASES").unwrap_or(default_cases);
    let only = env_u64("FLOW_FUZZ_ONLY");
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz_ron");
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4) as u64;
    {
        use std::io::Write;
        // Not captured by the test harness: visible even if a stack overflow aborts.
        let _ = writeln!(
            std::io::stderr(),
            "fuzz_ron: FLOW_FUZZ_SEED={master:#x} FLOW_FUZZ_CASES={cases}, {threads} threads, cases in {}",
            base.display()
        );
    }
    let corpus = Arc::new(corpus());
    // Default panic hook prints every caught panic; keep the first message only via the result.
    let prev_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));

    let failure: Arc<Mutex<Option<(u64, String, Case)>>> = Arc::new(Mutex::new(None));
    // FLOW_FUZZ_KEEP_GOING=1: report the first case of each kind of failure, then fail.
    let keep_going = std::env::var_os("FLOW_FUZZ_KEEP_GOING").is_some();
    let kinds: Arc<Mutex<Vec<(String, u64, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let started = std::time::Instant::now();
    let mut hs = Vec::new();
    for t in 0..threads {
        let (corpus, failure, stop, next, ok, kinds) = (
            corpus.clone(),
            failure.clone(),
            stop.clone(),
            next.clone(),
            ok.clone(),
            kinds.clone(),
        );
        let dir = base.join(format!("t{t}"));
        setup_dir(&dir);
        let h = std::thread::Builder::new()
            .name(format!("fuzz{t}"))
            // The main thread's stack: what `flow check` runs on.
            .stack_size(8 << 20)
            .spawn(move || {
                let registry = flow_stages::registry();
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = match only {
                        Some(i) => {
                            if next.fetch_add(1, Ordering::Relaxed) > 0 {
                                return;
                            }
                            i
                        }
                        None => next.fetch_add(1, Ordering::Relaxed),
                    };
                    if only.is_none() && i >= cases {
                        return;
                    }
                    let case = make_case(case_seed(master, i), &corpus);
                    let res = run_case(&dir, &case, &registry);
                    match res {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(m) if keep_going => {
                            let kind: String = m
                                .split(['\n', '`', '('])
                                .next()
                                .unwrap_or("")
                                .chars()
                                .filter(|c| !c.is_ascii_digit())
                                .take(60)
                                .collect();
                            let mut f = kinds.lock().unwrap();
                            if !f.iter().any(|(k, _, _)| *k == kind) {
                                let text = String::from_utf8_lossy(&case.files[0].1);
                                let short: String = text.chars().take(1500).collect();
                                let m: String = m.chars().take(1500).collect();
                                eprintln!("case {i}: {m}\n  input: {short:?}");
                                f.push((kind, i, m));
                            }
                        }
                        Err(m) => {
                            stop.store(true, Ordering::Relaxed);
                            let mut f = failure.lock().unwrap();
                            if f.as_ref().is_none_or(|(j, _, _)| i < *j) {
                                *f = Some((i, m, case));
                            }
                            return;
                        }
                    }
                }
            })
            .unwrap();
        hs.push(h);
    }
    for h in hs {
        h.join().unwrap();
    }
    std::panic::set_hook(prev_hook);
    let elapsed = started.elapsed();
    if let Some((i, msg, case)) = failure.lock().unwrap().take() {
        let dir = base.join(format!("failure-{master:x}-{i}"));
        setup_dir(&dir);
        for (name, bytes) in &case.files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        panic!(
            "case {i} failed: {msg}\n  input: {}\n  rerun: FLOW_FUZZ_SEED={master:#x} FLOW_FUZZ_ONLY={i} cargo test --release --test suite -- fuzz_ron\n  input text:\n{}",
            dir.join("case.ron").display(),
            String::from_utf8_lossy(&case.files[0].1)
        );
    }
    let kinds = kinds.lock().unwrap();
    let summary: Vec<String> = kinds.iter().map(|(k, i, _)| format!("case {i}: {k}")).collect();
    assert!(
        kinds.is_empty(),
        "{} kinds of failure:\n{}",
        kinds.len(),
        summary.join("\n")
    );
    eprintln!(
        "fuzz_ron: {} cases in {:.1}s",
        ok.load(Ordering::Relaxed),
        elapsed.as_secs_f64()
    );
}

// ---------- regressions the fuzzer found in rendering ----------

fn diag_in(text: &str, span: (usize, usize)) -> Diagnostic {
    let src = Arc::new(flow_engine::SourceFile {
        path: "p.ron".into(),
        text: text.to_string(),
    });
    Diagnostic::at(flow_engine::Code::Syntax, &src, span, "bad")
}

// miette counted the header's column in bytes and a lone `\r` as a line break: the
// rendered `[file:line:col]` disagreed with `--json` after `é`, `日本` or a lone CR.
#[test]
fn rendered_position_is_the_diagnostics() {
    let text = "Pipeline(\n  na\rme: \"日本é\" x,\n)";
    let at = text.find(" x").unwrap() + 1;
    let d = diag_in(text, (at, 1));
    assert_eq!((d.line, d.col), (2, 16));
    let r = render::render_diag(&d);
    assert!(r.contains("[p.ron:2:16]"), "{r}");
    check_diag(&d).unwrap();
}

// A label more than 65535 columns into its line made miette's `{:width$}` panic.
#[test]
fn rendering_a_very_long_line_does_not_panic() {
    let text = format!("Pipeline(name: \"{}\" é)", "Some(".repeat(20_000));
    let at = text.find('é').unwrap();
    let d = diag_in(&text, (at, 2));
    let r = render::render_diag(&d);
    assert!(r.contains(&format!("p.ron:1:{}", d.col)), "{r}");
}
