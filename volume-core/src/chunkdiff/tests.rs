use std::os::unix::fs::MetadataExt;

use super::send::Writer;
use super::*;

fn stream(new: &Path, parent: Option<&Path>) -> Vec<u8> {
    let mut out = Vec::new();
    send(new, parent, &mut out).unwrap();
    out
}

fn copy(src: &Path, dst: &Path) {
    let ok = std::process::Command::new("cp")
        .args(["-a"])
        .arg(src)
        .arg(dst)
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn full_then_incremental_streams_rebuild_the_tree() {
    let t = tempfile::tempdir().unwrap();
    let v1 = t.path().join("v1");
    std::fs::create_dir_all(v1.join("sub/deep")).unwrap();
    std::fs::write(v1.join("small"), b"hello").unwrap();
    let big: Vec<u8> = (0..(3 * CHUNK + 123)).map(|i| (i % 251) as u8).collect();
    std::fs::write(v1.join("sub/big"), &big).unwrap();
    std::fs::write(v1.join("gone"), b"bye").unwrap();
    std::fs::create_dir(v1.join("gonedir")).unwrap();
    std::fs::write(v1.join("gonedir/x"), b"x").unwrap();
    std::os::unix::fs::symlink("small", v1.join("link")).unwrap();
    std::fs::hard_link(v1.join("small"), v1.join("sub/deep/hard")).unwrap();
    // Sparse: a 64 MiB file with 1 MiB of data at 32 MiB.
    let sparse = File::create(v1.join("sparse")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &[7u8; CHUNK], 32 << 20).unwrap();

    std::fs::set_permissions(&v1, std::fs::Permissions::from_mode(0o750)).unwrap();
    // Full.
    let full = stream(&v1, None);
    assert!(
        full.len() < 6 * CHUNK,
        "zero chunks are not sent: {}",
        full.len()
    );
    let r1 = t.path().join("r1");
    std::fs::create_dir(&r1).unwrap();
    apply(full.as_slice(), &r1).unwrap();
    assert_eq!(tree_digest(&r1).unwrap(), tree_digest(&v1).unwrap());
    let root_mode = std::fs::metadata(&r1).unwrap().permissions().mode() & 0o7777;
    assert_eq!(root_mode, 0o750, "the root's mode travels");
    assert_eq!(std::fs::read(r1.join("sub/big")).unwrap(), big);
    assert_eq!(
        std::fs::read_link(r1.join("link")).unwrap(),
        Path::new("small")
    );
    assert_eq!(
        std::fs::metadata(r1.join("small")).unwrap().ino(),
        std::fs::metadata(r1.join("sub/deep/hard")).unwrap().ino()
    );
    let blocks = std::fs::metadata(r1.join("sparse")).unwrap().blocks();
    assert!(blocks * 512 < 8 << 20, "holes kept: {blocks} blocks");

    // Incremental: one chunk of big changed, a file removed, a dir removed, a
    // file turned into a directory, a new file.
    let v2 = t.path().join("v2");
    copy(&v1, &v2);
    let mut big2 = big.clone();
    big2[CHUNK + 5] ^= 0xff;
    std::fs::write(v2.join("sub/big"), &big2).unwrap();
    std::fs::remove_file(v2.join("gone")).unwrap();
    std::fs::remove_dir_all(v2.join("gonedir")).unwrap();
    std::fs::remove_file(v2.join("small")).unwrap();
    std::fs::create_dir(v2.join("small")).unwrap();
    std::fs::write(v2.join("new"), b"new").unwrap();
    let inc = stream(&v2, Some(&v1));
    assert!(
        inc.len() < CHUNK + 8192,
        "one changed chunk is sent, not the file: {}",
        inc.len()
    );
    let r2 = t.path().join("r2");
    copy(&r1, &r2);
    apply(inc.as_slice(), &r2).unwrap();
    assert_eq!(tree_digest(&r2).unwrap(), tree_digest(&v2).unwrap());
    assert_eq!(std::fs::read(r2.join("sub/big")).unwrap(), big2);
    assert!(!r2.join("gone").exists() && !r2.join("gonedir").exists());
    assert!(r2.join("small").is_dir());
    // The old hard link partner kept its content.
    assert_eq!(std::fs::read(r2.join("sub/deep/hard")).unwrap(), b"hello");
    // The parent copy is untouched.
    assert_eq!(tree_digest(&r1).unwrap(), tree_digest(&v1).unwrap());
}

#[test]
fn a_wrong_base_or_a_hostile_path_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let v1 = t.path().join("v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("f"), vec![1u8; 100]).unwrap();
    let v2 = t.path().join("v2");
    copy(&v1, &v2);
    std::fs::write(v2.join("f"), vec![2u8; 100]).unwrap();
    let inc = stream(&v2, Some(&v1));
    // Applied to something that is not the parent: the digest catches it.
    let wrong = t.path().join("wrong");
    std::fs::create_dir(&wrong).unwrap();
    std::fs::write(wrong.join("f"), vec![9u8; 200]).unwrap();
    std::fs::write(wrong.join("extra"), b"x").unwrap();
    let err = apply(inc.as_slice(), &wrong).unwrap_err();
    assert!(matches!(err, Error::StreamMismatch(_)), "{err}");

    // Paths that climb out, or go through a symlink, are refused.
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    for (ops, what) in [
        (
            vec![Op::Delete {
                path: "../outside".into(),
            }],
            "dotdot",
        ),
        (
            vec![
                Op::Symlink {
                    path: "l".into(),
                    target: outside.display().to_string(),
                    uid: 0,
                    gid: 0,
                },
                Op::Dir {
                    path: "l/x".into(),
                    mode: 0o40755,
                    uid: 0,
                    gid: 0,
                },
            ],
            "through a symlink",
        ),
        (
            vec![Op::Delete {
                path: "/etc".into(),
            }],
            "absolute",
        ),
    ] {
        let mut s = MAGIC.to_vec();
        let mut w = Writer { out: &mut s };
        for op in &ops {
            w.op(op).unwrap();
        }
        let dest = t.path().join(format!("d-{}", what.len()));
        std::fs::create_dir(&dest).unwrap();
        let err = apply(s.as_slice(), &dest).unwrap_err();
        assert!(matches!(err, Error::StreamMismatch(_)), "{what}: {err}");
    }
    assert!(outside.exists());
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
    // Out-of-range values are refused, not panics.
    let small_file = || Op::File {
        path: "f".into(),
        mode: 0o100644,
        uid: 0,
        gid: 0,
        size: 10,
        base: false,
    };
    for ops in [
        vec![
            small_file(),
            Op::Zero {
                offset: 0,
                len: 4 << 20,
            },
        ],
        vec![
            small_file(),
            Op::FileEnd {
                mtime: i64::MAX,
                mtime_nsec: u32::MAX,
            },
        ],
    ] {
        let mut s = MAGIC.to_vec();
        let mut w = Writer { out: &mut s };
        for op in &ops {
            w.op(op).unwrap();
        }
        let dest = t.path().join(format!("range-{}", ops.len() * 7 + s.len()));
        std::fs::create_dir(&dest).unwrap();
        // An error (the stream also ends without End), never a panic.
        assert!(apply(s.as_slice(), &dest).is_err());
    }
    // A truncated stream fails.
    let dest = t.path().join("trunc");
    std::fs::create_dir(&dest).unwrap();
    let full = stream(&v1, None);
    assert!(apply(&full[..full.len() - 3], &dest).is_err());
}
