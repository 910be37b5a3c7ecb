//! A killed run never leaves a half-written artifact that a later run would trust, and
//! never loses finished instances. Two runs on one cache wait for each other.

use crate::common;
use common::{set, wait_for, Ws};
use std::process::Stdio;
use std::time::Duration;

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
        "s1": Exec(cmd: "sleep 0.15; echo 1 > o1; mkdir -p d; for i in 1 2 3 4 5; do echo $i > d/f$i; done", outputs: ["o1", "d"]),
        "s2": Exec(cmd: "sleep 0.15; cat o1 d/f3 > o2; echo 2 >> o2", inputs: [Stage("s1")], outputs: ["o2"]),
        "f": Exec(cmd: "sleep 0.1; cat o2 > f{fold}; echo {fold} >> f{fold}; seq {fold} 30000 > big{fold}", folds: 3, inputs: [Stage("s2")], outputs: ["f{fold}", "big{fold}"]),
        "s3": Exec(cmd: "cat f0 f1 f2 > o3; wc -c big0 big1 big2 >> o3", inputs: [Stage("f")], outputs: ["o3"]),
        "s4": Exec(cmd: "sleep 0.05; cat o3 o1 > o4", inputs: [Stage("s3"), Stage("s1")], outputs: ["o4"]),
    },
)"#;

/// Run records by key with their start time: a record whose start time changes was executed
/// again.
fn records(ws: &Ws) -> std::collections::BTreeMap<String, f64> {
    let mut m = std::collections::BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(ws.path().join(".flow/runs")) {
        for e in rd.flatten() {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            m.insert(
                v["key"].as_str().unwrap().to_string(),
                v["started_unix"].as_f64().unwrap(),
            );
        }
    }
    m
}

/// Kill -9 at pseudo-random points (seeded; `FLOW_KILL_SEED`), `FLOW_KILL_ITERATIONS` times
/// (default 6; the stress variant: `FLOW_KILL_ITERATIONS=60 cargo test --release --test
/// robustness`). Every third kill the pipeline changes (a new `variant`), so there is always
/// work to interrupt. After every kill: the cache verifies, and no instance that had
/// finished before was executed again. Before each change: a run without a kill finishes
/// the variant, and its result equals an uninterrupted run's.
#[test]
fn repeated_kills_converge_to_the_uninterrupted_result() {
    let variant = |v: u64| CHAIN.replace("echo 1 > o1", &format!("echo {v} > o1"));
    let reference = Ws::new();
    let ws = Ws::new();
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let iterations = env("FLOW_KILL_ITERATIONS", 6);
    let mut rng = env("FLOW_KILL_SEED", 0x5eed) | 1;
    let mut next = move || {
        // xorshift64
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut finished = records(&ws);
    let (mut kills_mid_run, mut variants) = (0, 0);
    let mut i = 0;
    while i < iterations {
        let v = i / 3;
        ws.write("p.ron", &variant(v));
        for _ in 0..3.min(iterations - i) {
            let mut child = ws.spawn(&["run", "--json", "p.ron"]);
            let delay = next() % 700;
            std::thread::sleep(Duration::from_millis(delay));
            let _ = child.kill(); // SIGKILL
            if !child.wait_with_output().unwrap().status.success() {
                kills_mid_run += 1;
            }
            let out = ws.flow(&["verify", "--json"]);
            assert!(
                out.status.success(),
                "iteration {i} (killed after {delay} ms): the cache does not verify:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
            let now = records(&ws);
            for (k, t) in &finished {
                assert_eq!(
                    now.get(k),
                    Some(t),
                    "iteration {i} (killed after {delay} ms): finished instance {k} was executed again"
                );
            }
            finished = now;
            i += 1;
        }
        // Finish the variant: only what did not finish runs, and the result is the one an
        // uninterrupted run gets.
        let s = ws.run("p.ron", 0);
        assert_eq!(s.executed.len() + s.cached.len(), 7);
        let now = records(&ws);
        for (k, t) in &finished {
            assert_eq!(now.get(k), Some(t), "variant {v}: {k} re-executed by the finishing run");
        }
        finished = now;
        reference.write("p.ron", &variant(v));
        reference.run("p.ron", 0);
        for f in ["out/kills/s4/o4", "out/kills/f/fold1/f1", "out/kills/f/fold2/big2"] {
            assert_eq!(
                ws.read(f),
                reference.read(f),
                "variant {v}: {f} differs from an uninterrupted run"
            );
        }
        assert!(ws.status("p.ron").iter().all(|s| s["state"] == "fresh"));
        variants += 1;
    }
    eprintln!("{iterations} kills ({kills_mid_run} mid-run) over {variants} pipeline variants");
    assert!(kills_mid_run > 0, "no kill landed while a run was going on");
    assert!(ws.run("p.ron", 0).executed.is_empty());
}

#[test]
fn a_dead_runs_lock_is_taken_over_with_a_message() {
    let ws = Ws::new();
    ws.write("p.ron", SLOW);
    let mut child = ws
        .cmd(&["run", "p.ron"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_for(&ws.path().join("slow.pid"), "the slow stage to start");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(ws.read(".flow/lock").lines().next(), Some(&*pid.to_string()));
    ws.write("go", "");
    let out = ws.flow(&["run", "p.ron"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "took over the cache lock of pid {pid}, which is no longer running"
        )),
        "{err}"
    );
}

#[test]
fn two_runs_on_one_cache_wait_and_reuse() {
    let ws = Ws::new();
    ws.write(
        "p.ron",
        &CHAIN.replace("sleep 0.15; echo 1", "touch $FLOW_WORKSPACE/started; sleep 0.4; echo 1"),
    );
    let a = ws.spawn(&["run", "--json", "p.ron"]);
    wait_for(&ws.path().join("started"), "the first run to start");
    let b = ws.spawn(&["run", "--json", "p.ron"]);
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(oa.status.success() && ob.status.success());
    let sa = common::Summary::from(&serde_json::from_slice::<serde_json::Value>(&oa.stdout).unwrap());
    let sb = common::Summary::from(&serde_json::from_slice::<serde_json::Value>(&ob.stdout).unwrap());
    let mut all = sa.executed.clone();
    all.extend(sb.executed.clone());
    all.sort();
    assert_eq!(
        all,
        set(&["f@fold0", "f@fold1", "f@fold2", "s1", "s2", "s3", "s4"]),
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
    let v = ws.flow(&["verify"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}
