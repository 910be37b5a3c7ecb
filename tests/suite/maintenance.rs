//! `flow verify` and `flow gc`, and what happens when the cache directory is not writable
//! or its disk is full: a clear error, nothing half-published, and the next run (once the
//! problem is fixed) executes exactly what did not finish.

use crate::common;
use common::{chown_tree, files_under, has, in_mount_namespace, stdout_json as json, unprivileged};
use common::{set, Ws};
use std::time::Duration;

const CHAIN: &str = r#"Pipeline(
    name: "chain",
    stages: {
        "a": Exec(cmd: "cat data/x.txt > a.txt && echo v1 >> a.txt", inputs: [Path("data")], outputs: ["a.txt"]),
        "b": Exec(cmd: "tr a-z A-Z < a.txt > b.txt", inputs: [Stage("a")], outputs: ["b.txt"]),
        "c": Exec(cmd: "wc -c < b.txt > c.txt", inputs: [Stage("b")], outputs: ["c.txt"]),
        "d": Exec(cmd: "cat c.txt > d.txt && echo d >> d.txt", inputs: [Stage("c")], outputs: ["d.txt"]),
    },
)
"#;

fn setup() -> Ws {
    let ws = Ws::new();
    ws.write("data/x.txt", "hello\n");
    ws.write("p.ron", CHAIN);
    ws
}

fn verify(ws: &Ws) -> (i32, serde_json::Value) {
    let out = ws.flow(&["verify", "--json"]);
    (out.status.code().unwrap_or(-1), json(&out))
}

/// Overwrite a read-only published file (a hard link to its object) with other bytes of the
/// same length and put its modification time back, as bit rot would leave it: a stat-only
/// check cannot notice (an edit that moves the mtime is caught by the run itself).
fn tamper_same_size(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let old = std::fs::read(path).unwrap();
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    let mut new = old.clone();
    new[0] = if new[0] == b'9' { b'8' } else { b'9' };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(path, &new).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

#[test]
fn verify_finds_tampered_and_missing_objects_and_the_next_run_redoes_them() {
    let ws = setup();
    ws.run("p.ron", 0);
    let (code, v) = verify(&ws);
    assert_eq!(code, 0, "{v}");
    // a, b, c, d and a tree manifest per record.
    assert_eq!(v["objects_checked"], 8, "{v}");
    assert_eq!(v["records_checked"], 4);

    let c = ws.path().join("out/chain/c/c.txt");
    let good = ws.read("out/chain/c/c.txt");
    tamper_same_size(&c);
    // Same size: a run's stat-level check trusts it; that is what verify is for.
    assert!(ws.status("p.ron").iter().all(|s| s["state"] == "fresh"));
    let (code, v) = verify(&ws);
    assert_eq!(code, 1, "verify must fail on a damaged object: {v}");
    let bad = v["bad_objects"].as_array().unwrap();
    assert_eq!(bad.len(), 1, "{v}");
    assert_eq!(bad[0]["problem"], "content does not match its hash");
    assert_eq!(bad[0]["used_by"], serde_json::json!(["c: c.txt"]));
    let broken: Vec<&str> = v["broken_records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["instance"].as_str().unwrap())
        .collect();
    assert_eq!(broken, ["c"]);
    assert!(ws
        .path()
        .join(".flow/quarantine")
        .join(bad[0]["hash"].as_str().unwrap())
        .is_file());

    // Now the damage is known: c is stale, reruns alone (d is cut off: same bytes again).
    let st = ws.status("p.ron");
    let sc = st.iter().find(|s| s["stage"] == "c").unwrap();
    assert_eq!(sc["state"], "stale", "{sc}");
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed, set(&["c"]));
    assert_eq!(ws.read("out/chain/c/c.txt"), good);
    assert_eq!(verify(&ws).0, 0);

    // A missing object is reported the same way (and verify says which record needs it).
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(ws.path().join("out/chain/b/b.txt")).unwrap().ino();
    let obj = files_under(&ws.path().join(".flow/objects"))
        .into_iter()
        .find(|p| std::fs::metadata(p).unwrap().ino() == ino)
        .expect("b.txt's object");
    std::fs::remove_file(obj).unwrap();
    let (code, v) = verify(&ws);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["broken_records"][0]["instance"], "b", "{v}");
    assert!(has(&v["broken_records"][0]["problem"], "object missing"), "{v}");
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed, set(&["b"]));

    // Human output names the damage.
    tamper_same_size(&ws.path().join("out/chain/a/a.txt"));
    let out = ws.flow(&["verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.contains("damaged object") && text.contains("used by a: a.txt") && text.contains("chain/a"),
        "{text}"
    );
}

#[test]
fn gc_removes_only_what_the_named_pipelines_cannot_reach() {
    let ws = setup();
    ws.write(
        "q.ron",
        &CHAIN.replace("\"chain\"", "\"other\"").replace("echo v1", "echo q"),
    );
    ws.run("p.ron", 0);
    ws.run("q.ron", 0);
    // An older version of p: its records become history.
    ws.write("p.ron", &CHAIN.replace("echo v1", "echo v2"));
    ws.run("p.ron", 0);
    ws.write("p.ron", &CHAIN.replace("echo v1", "echo v3"));
    ws.run("p.ron", 0);
    let records = |ws: &Ws| files_under(&ws.path().join(".flow/runs")).len();
    let objects = |ws: &Ws| files_under(&ws.path().join(".flow/objects")).len();
    let (r0, o0) = (records(&ws), objects(&ws));

    // Dry run: says what would go, removes nothing.
    let out = ws.flow(&["gc", "--dry-run", "--json", "p.ron"]);
    assert!(out.status.success());
    let v = json(&out);
    assert_eq!(v["dry_run"], true);
    assert_eq!((records(&ws), objects(&ws)), (r0, o0));
    let removed = v["records_removed"].as_array().unwrap().len();
    // Kept: p's current (v3) and last records = 4; q's 4 and p's v1/v2 a,b,c... go, except
    // those shared by content with v3 (c and d are the same bytes for every vN).
    assert_eq!(v["records_kept"], 4, "{v}");
    assert_eq!(removed, r0 - 4, "{v}");
    assert!(v["bytes_removed"].as_u64().unwrap() > 0);
    let text = String::from_utf8_lossy(&ws.flow(&["gc", "--dry-run", "p.ron"]).stdout).to_string();
    assert!(text.starts_with("would remove ") && text.contains("other/a"), "{text}");

    // --keep-history keeps every record of p (v1, v2, v3), drops q's.
    let v = json(&ws.flow(&["gc", "--dry-run", "--keep-history", "--json", "p.ron"]));
    let gone: Vec<&str> = v["records_removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["pipeline"].as_str().unwrap())
        .collect();
    assert!(!gone.is_empty() && gone.iter().all(|p| *p == "other"), "{v}");

    // The real thing.
    let out = ws.flow(&["gc", "--json", "p.ron"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = json(&out);
    assert_eq!(records(&ws), 4);
    assert_eq!(objects(&ws), v["objects_kept"].as_u64().unwrap() as usize);
    assert!(objects(&ws) < o0);
    // Nothing p needs is gone; everything left verifies.
    assert!(ws.run("p.ron", 0).executed.is_empty());
    assert_eq!(verify(&ws).0, 0);
    // q was not named: it runs again.
    assert_eq!(ws.run("q.ron", 0).executed.len(), 4);
    // Going back to v1 needs a rerun of what gc dropped (d is cut off: c's bytes are the same).
    ws.write("p.ron", CHAIN);
    assert_eq!(ws.run("p.ron", 0).executed, set(&["a", "b", "c"]));
}

#[test]
fn gc_waits_for_a_running_pipeline_and_removes_nothing_it_uses() {
    let ws = setup();
    let slow = CHAIN.replace(
        "\"tr a-z A-Z < a.txt > b.txt\"",
        "\"touch $FLOW_WORKSPACE/started; while [ ! -f $FLOW_WORKSPACE/go ]; do sleep 0.05; done; tr a-z A-Z < a.txt > b.txt\"",
    );
    ws.write("p.ron", &slow);
    let run = ws.spawn(&["run", "--json", "p.ron"]);
    common::wait_for(&ws.path().join("started"), "the run to start");
    // a is published, b is running. gc (naming no pipeline that uses a) must wait.
    ws.write(
        "unrelated.ron",
        r#"Pipeline(name: "u", stages: { "x": Exec(cmd: "echo x > x", outputs: ["x"]) })"#,
    );
    let mut gc = ws.spawn(&["gc", "--json", "unrelated.ron"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        gc.try_wait().unwrap().is_none(),
        "gc must wait for the running pipeline"
    );
    ws.write("go", "");
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success());
    let gc_out = gc.wait_with_output().unwrap();
    assert!(gc_out.status.success());
    assert!(
        String::from_utf8_lossy(&gc_out.stderr).contains("waiting for another flow run"),
        "{}",
        String::from_utf8_lossy(&gc_out.stderr)
    );
    // gc ran after the run: it removed p's records (p was not named), but never while the
    // run used them — the run finished with a complete, verifiable result.
    let v = json(&gc_out);
    assert_eq!(v["records_removed"].as_array().unwrap().len(), 4, "{v}");
    assert_eq!(ws.read("out/chain/d/d.txt"), "9\nd\n");
    assert_eq!(verify(&ws).0, 0);
}

#[test]
fn unwritable_cache_is_a_clear_error_and_publishes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let ws = setup();
    ws.run("p.ron", 0);
    ws.write("p.ron", &CHAIN.replace("echo v1", "echo v2"));
    let root = unsafe { libc::geteuid() } == 0;
    let objects = ws.path().join(".flow/objects");
    if root {
        // Everything belongs to the unprivileged user except objects/.
        std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        chown_tree(ws.path(), 65534);
        chown_tree(&objects, 0);
        std::fs::set_permissions(&objects, std::fs::Permissions::from_mode(0o755)).unwrap();
        for shard in std::fs::read_dir(&objects).unwrap().flatten() {
            std::fs::set_permissions(shard.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    } else {
        std::fs::set_permissions(&objects, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let records_before = files_under(&ws.path().join(".flow/runs"));
    let out = unprivileged(&ws, &["run", "p.ron"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Permission denied") && err.contains("objects"), "{err}");
    assert!(err.contains("failed: a"), "{err}");
    assert_eq!(
        files_under(&ws.path().join(".flow/runs")),
        records_before,
        "nothing published"
    );
    // Fixed permissions: exactly the unfinished work runs.
    if root {
        chown_tree(&objects, 65534);
    } else {
        std::fs::set_permissions(&objects, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = unprivileged(&ws, &["run", "--json", "p.ron"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = common::Summary::from(&json(&out));
    assert_eq!(
        s.executed,
        set(&["a", "b", "c"]),
        "d is cut off: c wrote the same bytes"
    );
    let out = unprivileged(&ws, &["verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // A cache directory that cannot be created at all.
    let out = unprivileged(&ws, &["--cache-dir", "/proc/flow-cache", "run", "p.ron"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/proc/flow-cache"), "{err}");
}

#[test]
fn disk_full_is_a_clear_error_and_publishes_nothing() {
    let ws = Ws::new();
    ws.write(
        "p.ron",
        r#"Pipeline(
    name: "full",
    stages: {
        "small": Exec(cmd: "echo small > s.txt", outputs: ["s.txt"]),
        "big": Exec(cmd: "cat s.txt > big.bin && head -c 3000000 /dev/zero >> big.bin", inputs: [Stage("small")], outputs: ["big.bin"]),
        "after": Exec(cmd: "wc -c < big.bin > n.txt", inputs: [Stage("big")], outputs: ["n.txt"]),
    },
)"#,
    );
    // A 2 MiB file system for the cache: `big` cannot fit. Then it grows and the run finishes.
    let script = r#"set -u
mkdir -p cache && mount -t tmpfs -o size=2m flowtest cache || exit 99
"$FLOW" --cache-dir cache run p.ron 2> err1.txt; echo "run1=$?"
ls cache/runs | wc -l | sed 's/^/records=/'
"$FLOW" --cache-dir cache verify > verify1.txt; echo "verify1=$?"
# A full disk before the run even starts: flow's own writes fail, clearly.
head -c 3000000 /dev/zero > cache/filler 2>/dev/null
"$FLOW" --cache-dir cache run p.ron 2> err2.txt; echo "run2=$?"
rm cache/filler
mount -o remount,size=16m cache
"$FLOW" --cache-dir cache run --json p.ron > run3.json 2> err3.txt; echo "run3=$?"
"$FLOW" --cache-dir cache verify > verify2.txt; echo "verify2=$?"
"#;
    let Some(out) = in_mount_namespace(script, ws.path()) else {
        eprintln!("note: no user namespaces here (unshare failed): disk-full test not run");
        return;
    };
    let log = String::from_utf8_lossy(&out.stdout).to_string();
    let err1 = ws.read("err1.txt");
    assert!(log.contains("run1=1"), "{log}\n{err1}");
    assert!(
        err1.contains("failed: big") && err1.contains("No space left on device"),
        "{err1}"
    );
    assert!(log.contains("records=1\n"), "only `small` is published: {log}");
    assert!(log.contains("verify1=0"), "{log}\n{}", ws.read("verify1.txt"));
    let err2 = ws.read("err2.txt");
    assert!(log.contains("run2=1") || log.contains("run2=2"), "{log}\n{err2}");
    assert!(err2.contains("No space left on device"), "{err2}");
    assert!(log.contains("run3=0"), "{log}\n{}", ws.read("err3.txt"));
    let s = common::Summary::from(&serde_json::from_str::<serde_json::Value>(&ws.read("run3.json")).unwrap());
    assert_eq!(s.executed, set(&["after", "big"]));
    assert_eq!(s.cached, set(&["small"]));
    assert!(log.contains("verify2=0"), "{log}");
}
