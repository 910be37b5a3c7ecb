//! A killed run never leaves a half-written artifact that a later run would trust, and
//! never loses finished instances. Two runs on one cache wait for each other.

mod common;
use common::{set, Ws};
use std::process::Stdio;
use std::time::{Duration, Instant};

const SLOW: &str = r#"Pipeline(
    name: "crash",
    stages: {
        "a": Exec(cmd: "echo a > a.txt", outputs: ["a.txt"]),
        "slow": Exec(
            cmd: "echo $$ > \"$FLOW_WORKSPACE/slow.pid\"; cat a.txt > s.txt; echo partial >> s.txt; while [ ! -f \"$FLOW_WORKSPACE/go\" ]; do sleep 0.05; done; echo full >> s.txt",
            inputs: [Stage("a")],
            outputs: ["s.txt"],
        ),
        "after": Exec(cmd: "cat s.txt > after.txt", inputs: [Stage("slow")], outputs: ["after.txt"]),
    },
)"#;

fn wait_for(path: &std::path::Path, what: &str) {
    let t = Instant::now();
    while !path.exists() {
        assert!(t.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigkill_mid_stage_publishes_nothing_partial_and_keeps_finished_work() {
    let ws = Ws::new();
    ws.write("p.ron", SLOW);
    let mut child = ws
        .cmd(&["run", "--json", "p.ron"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pidfile = ws.path().join("slow.pid");
    wait_for(&pidfile, "the slow stage to start");
    std::thread::sleep(Duration::from_millis(100));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The stage's command runs in its own process group; make sure it is gone too.
    let pgid: i32 = ws.read("slow.pid").trim().parse().unwrap();
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    let tmp_entries = std::fs::read_dir(ws.path().join(".flow/tmp")).unwrap().count();
    assert!(tmp_entries > 0, "expected the killed run's work dir to be left behind");

    let st = ws.status("p.ron");
    let state = |id: &str| {
        st.iter().find(|s| s["stage"] == id).unwrap()["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(state("a"), "fresh");
    assert_eq!(state("slow"), "never-run", "a killed stage must not look finished");
    assert!(!ws.path().join("out/crash/slow").exists());

    ws.write("go", "");
    std::fs::remove_file(&pidfile).unwrap();
    let s = ws.run("p.ron", 0);
    assert_eq!(s.cached, set(&["a"]));
    assert_eq!(s.executed, set(&["after", "slow"]));
    assert_eq!(ws.read("out/crash/after/after.txt"), "a\npartial\nfull\n");
    // The dead run's work dir was cleaned up.
    let left: Vec<_> = std::fs::read_dir(ws.path().join(".flow/tmp")).unwrap().collect();
    assert!(left.is_empty(), "stale tmp left: {left:?}");
}

const CHAIN: &str = r#"Pipeline(
    name: "kills",
    stages: {
        "s1": Exec(cmd: "sleep 0.15; echo 1 > o1", outputs: ["o1"]),
        "s2": Exec(cmd: "sleep 0.15; cat o1 > o2; echo 2 >> o2", inputs: [Stage("s1")], outputs: ["o2"]),
        "f": Exec(cmd: "sleep 0.1; cat o2 > f{fold}; echo {fold} >> f{fold}", folds: 3, inputs: [Stage("s2")], outputs: ["f{fold}"]),
        "s3": Exec(cmd: "cat f0 f1 f2 > o3", inputs: [Stage("f")], outputs: ["o3"]),
    },
)"#;

#[test]
fn repeated_kills_converge_to_the_uninterrupted_result() {
    let reference = Ws::new();
    reference.write("p.ron", CHAIN);
    reference.run("p.ron", 0);
    let want = reference.read("out/kills/s3/o3");

    let ws = Ws::new();
    ws.write("p.ron", CHAIN);
    let iterations: u64 = std::env::var("FLOW_KILL_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut executed_total = Vec::new();
    for i in 0..iterations {
        let mut child = ws
            .cmd(&["run", "--json", "p.ron"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(60 + (i * 97) % 400));
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            executed_total.extend(common::Summary::from(&v).executed);
        }
    }
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed.len() + s.cached.len(), 6);
    assert_eq!(
        ws.read("out/kills/s3/o3"),
        want,
        "result differs from an uninterrupted run"
    );
    // Everything verifies as fresh and nothing runs again.
    assert!(ws.status("p.ron").iter().all(|s| s["state"] == "fresh"));
    assert!(ws.run("p.ron", 0).executed.is_empty());
    let _ = executed_total;
}

#[test]
fn two_runs_on_one_cache_wait_and_reuse() {
    let ws = Ws::new();
    ws.write(
        "p.ron",
        &CHAIN.replace("sleep 0.15; echo 1", "touch $FLOW_WORKSPACE/started; sleep 0.4; echo 1"),
    );
    let a = ws
        .cmd(&["run", "--json", "p.ron"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&ws.path().join("started"), "the first run to start");
    let b = ws
        .cmd(&["run", "--json", "p.ron"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(oa.status.success() && ob.status.success());
    let sa = common::Summary::from(&serde_json::from_slice::<serde_json::Value>(&oa.stdout).unwrap());
    let sb = common::Summary::from(&serde_json::from_slice::<serde_json::Value>(&ob.stdout).unwrap());
    let mut all = sa.executed.clone();
    all.extend(sb.executed.clone());
    all.sort();
    assert_eq!(
        all,
        set(&["f@fold0", "f@fold1", "f@fold2", "s1", "s2", "s3"]),
        "each instance runs exactly once: {sa:?} {sb:?}"
    );
    assert!(
        sb.executed.is_empty(),
        "the second run waits for the lock, then reuses everything"
    );
    assert!(
        String::from_utf8_lossy(&ob.stderr).contains("waiting for another flow run"),
        "{}",
        String::from_utf8_lossy(&ob.stderr)
    );
}
