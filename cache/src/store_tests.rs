//! Tests of the object store proper.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::*;

fn store(d: &Path) -> Store {
    Store::open(&d.join(".flow")).unwrap()
}

#[test]
fn open_creates_layout_and_fails_clearly() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    assert!(s.root().is_absolute());
    for sub in SUBDIRS {
        assert!(s.root().join(sub).is_dir(), "{sub}");
    }
    let file = d.path().join("plain");
    fs::write(&file, "x").unwrap();
    let e = Store::open(&file.join("cache")).unwrap_err().to_string();
    assert!(e.contains(&*file.to_string_lossy()), "{e}");
}

#[test]
fn put_get_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let h = s.put_bytes(b"hello world").unwrap();
    assert_eq!(h, Hash::of_bytes(b"hello world"));
    assert!(s.has_object(&h));
    let p = s.object_path(&h);
    let hex = h.to_hex();
    assert!(p.ends_with(format!("objects/{}/{}", &hex[..2], &hex[2..])));
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o444);
    assert_eq!(s.read_object(&h).unwrap(), b"hello world");
    // Idempotent.
    assert_eq!(s.put_bytes(b"hello world").unwrap(), h);
    assert_eq!(s.list_objects().unwrap(), vec![(h, 11)]);
    assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
    // Missing object: the error names its path.
    let missing = Hash::of_bytes(b"nope");
    let e = s.read_object(&missing).unwrap_err().to_string();
    assert!(e.contains(&*s.object_path(&missing).to_string_lossy()), "{e}");

    // Trees.
    let mut t = Tree::default();
    t.entries.insert(
        "x/y".into(),
        Entry {
            hash: h,
            size: 11,
            executable: false,
        },
    );
    let th = s.put_tree(&t).unwrap();
    assert_eq!(th, t.hash());
    assert_eq!(s.get_tree(&th).unwrap(), t);
    assert!(s.get_tree(&h).is_err(), "a blob is not a tree");
}

#[test]
fn ingest_moves_files_and_dedups() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let make = |dir: &Path| {
        fs::create_dir_all(dir.join("sub/deeper")).unwrap();
        fs::create_dir_all(dir.join("empty")).unwrap();
        fs::write(dir.join("a.txt"), "alpha").unwrap();
        fs::write(dir.join("sub/b.bin"), vec![7u8; 100_000]).unwrap();
        fs::write(dir.join("sub/deeper/c"), "alpha").unwrap();
        fs::write(dir.join("tool"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(dir.join("tool"), fs::Permissions::from_mode(0o755)).unwrap();
    };
    let out1 = d.path().join("out1");
    make(&out1);
    let t1 = s.ingest_dir(&out1).unwrap();
    let keys: Vec<&str> = t1.entries.keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, ["a.txt", "sub/b.bin", "sub/deeper/c", "tool"]);
    assert_eq!(t1.entries["a.txt"].hash, Hash::of_bytes(b"alpha"));
    assert_eq!(t1.entries["sub/b.bin"].size, 100_000);
    assert!(t1.entries["tool"].executable && !t1.entries["a.txt"].executable);
    assert!(!out1.join("a.txt").exists() && !out1.join("sub/b.bin").exists());
    assert_eq!(s.list_objects().unwrap().len(), 3, "alpha stored once");
    for e in t1.entries.values() {
        let m = fs::metadata(s.object_path(&e.hash)).unwrap();
        assert_eq!(m.mode() & 0o777, 0o444);
    }
    assert!(s.check_tree(&t1).is_empty());

    let out2 = d.path().join("out2");
    make(&out2);
    let t2 = s.ingest_dir(&out2).unwrap();
    assert_eq!(t2, t1);
    assert_eq!(s.list_objects().unwrap().len(), 3);
    assert!(!out2.join("tool").exists());
}

#[test]
fn ingest_copies_through_symlinks_without_moving_targets() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let input = d.path().join("input");
    fs::create_dir_all(input.join("dir")).unwrap();
    fs::write(input.join("data.csv"), "1,2,3").unwrap();
    fs::write(input.join("dir/inner"), "inner").unwrap();
    let out = d.path().join("out");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("own"), "own").unwrap();
    std::os::unix::fs::symlink(input.join("data.csv"), out.join("linked.csv")).unwrap();
    std::os::unix::fs::symlink(input.join("dir"), out.join("linkdir")).unwrap();
    std::os::unix::fs::symlink("own", out.join("rel-link")).unwrap();
    let t = s.ingest_dir(&out).unwrap();
    let keys: Vec<&str> = t.entries.keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, ["linkdir/inner", "linked.csv", "own", "rel-link"]);
    assert_eq!(t.entries["rel-link"].hash, Hash::of_bytes(b"own"));
    // Targets untouched and still writable.
    assert_eq!(fs::read(input.join("data.csv")).unwrap(), b"1,2,3");
    assert_eq!(fs::read(input.join("dir/inner")).unwrap(), b"inner");
    assert_eq!(fs::metadata(input.join("data.csv")).unwrap().mode() & 0o200, 0o200);
    assert!(fs::symlink_metadata(out.join("linked.csv")).is_err());
    assert!(s.check_tree(&t).is_empty());
}

#[test]
fn hard_linked_file_is_copied_not_captured() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let user = d.path().join("user.dat");
    fs::write(&user, "precious").unwrap();
    let out = d.path().join("out");
    fs::create_dir_all(&out).unwrap();
    fs::hard_link(&user, out.join("f")).unwrap();
    let t = s.ingest_dir(&out).unwrap();
    let obj = s.object_path(&t.entries["f"].hash);
    assert_ne!(fs::metadata(&obj).unwrap().ino(), fs::metadata(&user).unwrap().ino());
    assert_eq!(fs::metadata(&user).unwrap().mode() & 0o200, 0o200);
}

#[test]
fn check_tree_reports_missing_and_wrong_size() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let h = s.put_bytes(b"0123456789").unwrap();
    let gone = Hash::of_bytes(b"gone");
    let mut t = Tree::default();
    let e = |hash, size| Entry {
        hash,
        size,
        executable: false,
    };
    t.entries.insert("ok".into(), e(h, 10));
    t.entries.insert("short".into(), e(h, 12));
    t.entries.insert("missing".into(), e(gone, 4));
    let p = s.check_tree(&t);
    assert_eq!(
        p,
        vec![
            Problem {
                path: "missing".into(),
                hash: gone,
                what: "object missing".into()
            },
            Problem {
                path: "short".into(),
                hash: h,
                what: "size 10 != recorded 12".into()
            },
        ]
    );
}

#[test]
fn materialize_symlink_and_copy() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let src = d.path().join("src");
    fs::create_dir_all(src.join("m")).unwrap();
    fs::write(src.join("m/model.pt"), "weights").unwrap();
    fs::write(src.join("run"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(src.join("run"), fs::Permissions::from_mode(0o755)).unwrap();
    let t = s.ingest_dir(&src).unwrap();

    let links = d.path().join("links");
    s.materialize(&t, &links, Materialize::Symlink).unwrap();
    let target = fs::read_link(links.join("m/model.pt")).unwrap();
    assert!(target.is_absolute());
    assert_eq!(target, s.object_path(&t.entries["m/model.pt"].hash));
    assert_eq!(fs::read(links.join("m/model.pt")).unwrap(), b"weights");

    let copies = d.path().join("copies");
    s.materialize(&t, &copies, Materialize::Copy).unwrap();
    let m = fs::symlink_metadata(copies.join("m/model.pt")).unwrap();
    assert!(m.is_file());
    assert_eq!(m.mode() & 0o200, 0o200, "writable");
    assert_eq!(fs::metadata(copies.join("run")).unwrap().mode() & 0o100, 0o100);
    fs::write(copies.join("m/model.pt"), "changed").unwrap();
    assert_eq!(s.read_object(&t.entries["m/model.pt"].hash).unwrap(), b"weights");

    let e = s.materialize(&t, &links, Materialize::Symlink).unwrap_err();
    assert!(matches!(e, CacheError::Exists { .. }), "{e}");
    let e = s.materialize(&t, &copies, Materialize::Copy).unwrap_err();
    assert!(matches!(e, CacheError::Exists { .. }), "{e}");
}

#[test]
fn verify_all_detects_tampering() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let good = s.put_bytes(b"good").unwrap();
    let bad = s.put_bytes(b"will be tampered").unwrap();
    let r = s.verify_all().unwrap();
    assert_eq!((r.checked, r.corrupt.len(), r.unreadable.len()), (2, 0, 0));

    let p = s.object_path(&bad);
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&p, "tampered!!!!!!!!").unwrap();
    let r = s.verify_all().unwrap();
    assert_eq!(r.checked, 2);
    assert_eq!(r.corrupt, vec![bad]);
    assert!(s.read_object(&bad).is_err());
    assert_eq!(s.read_object(&good).unwrap(), b"good");

    s.remove_object(&bad).unwrap();
    s.remove_object(&bad).unwrap();
    assert_eq!(s.list_objects().unwrap(), vec![(good, 4)]);
}

#[test]
fn error_messages_name_paths() {
    let e = CacheError::Io {
        op: "write",
        path: "/x/.flow/objects/ab/cd".into(),
        err: std::io::Error::from_raw_os_error(28),
    };
    assert_eq!(
        e.to_string(),
        "cannot write /x/.flow/objects/ab/cd: No space left on device (os error 28)"
    );
    assert_eq!(e.io_kind(), Some(std::io::ErrorKind::StorageFull));
}

// Issue 11: an object edited in place (root can write read-only files, e.g. through an out/
// hard link) was kept by the next publish of the same content, damaged, forever.
#[test]
fn publishing_replaces_a_damaged_object() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let h = s.put_bytes(b"hello\n").unwrap();
    let obj = s.object_path(&h);
    let damage = |bytes: &[u8]| {
        fs::set_permissions(&obj, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&obj, bytes).unwrap();
    };
    for damaged in [&b"hello\nX\n"[..], b"HELLO\n", b""] {
        damage(damaged);
        // Through each publishing path: bytes, a moved file, a copied file.
        assert_eq!(s.put_bytes(b"hello\n").unwrap(), h);
        assert_eq!(s.read_object(&h).unwrap(), b"hello\n");
        damage(damaged);
        let f = s.root().join("f");
        fs::write(&f, b"hello\n").unwrap();
        assert_eq!(s.put_file_move(&f).unwrap().hash, h);
        assert_eq!(s.read_object(&h).unwrap(), b"hello\n");
        damage(damaged);
        fs::write(&f, b"hello\n").unwrap();
        assert_eq!(s.put_file_copy(&f).unwrap().hash, h);
        assert_eq!(s.read_object(&h).unwrap(), b"hello\n");
        fs::remove_file(&f).unwrap();
    }
    // Each damaged copy was kept for a look.
    assert_eq!(s.quarantined().unwrap().len(), 9);
    // Intact objects are kept as they are (same inode).
    let ino = fs::metadata(&obj).unwrap().ino();
    s.put_bytes(b"hello\n").unwrap();
    assert_eq!(fs::metadata(&obj).unwrap().ino(), ino);
}

#[test]
fn a_moved_mtime_is_re_hashed() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let f = s.root().join("f");
    fs::write(&f, b"abc").unwrap();
    let e = s.put_file_move(&f).unwrap();
    let mut t = Tree::default();
    t.entries.insert("f".into(), e.clone());
    let stamps: std::collections::BTreeMap<String, i64> = [("f".to_string(), s.object_mtime(&e.hash).unwrap())]
        .into_iter()
        .collect();
    assert_eq!(s.check_tree_stamped(&t, &stamps), (vec![], Default::default()));
    let obj = s.object_path(&e.hash);
    fs::set_permissions(&obj, fs::Permissions::from_mode(0o644)).unwrap();
    // Same size, same bytes, later mtime: intact, and the new mtime is handed back.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    fs::File::options()
        .write(true)
        .open(&obj)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let (problems, restamped) = s.check_tree_stamped(&t, &stamps);
    assert!(problems.is_empty());
    assert_eq!(restamped.get("f"), s.object_mtime(&e.hash).as_ref());
    // Same size, other bytes: a problem, though `check_tree` (size only) sees none.
    fs::write(&obj, b"xyz").unwrap();
    assert!(s.check_tree(&t).is_empty());
    let (problems, _) = s.check_tree_stamped(&t, &stamps);
    assert_eq!(problems.len(), 1);
    assert!(problems[0].what.contains("written after it was cached"), "{problems:?}");
}

#[test]
fn a_directory_that_is_not_a_cache_is_refused() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("data/quarantine")).unwrap();
    fs::write(d.path().join("data/quarantine/q.txt"), "q").unwrap();
    let e = Store::open(&d.path().join("data")).unwrap_err().to_string();
    assert!(e.contains("is not a flow cache"), "{e}");
    assert!(Store::open_read_only(&d.path().join("data")).is_err());
    assert_eq!(
        fs::read_dir(d.path().join("data")).unwrap().count(),
        1,
        "nothing was created"
    );
    // New, empty, tagged, and pre-tag caches are fine.
    let s = Store::open(&d.path().join("new")).unwrap();
    assert!(s.root().join(crate::CACHE_TAG).is_file());
    assert!(Store::open(&d.path().join("new")).is_ok());
    fs::remove_file(s.root().join(crate::CACHE_TAG)).unwrap();
    assert!(
        Store::open(&d.path().join("new")).is_ok(),
        "a cache from before the tag"
    );
}
