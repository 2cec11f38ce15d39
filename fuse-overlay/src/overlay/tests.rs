//! Unit tests of the overlay core, without FUSE or privilege: the core is called
//! directly on layers in temporary directories. (Run as root, the same tests exercise
//! the kernel-style whiteouts and xattrs instead of the OCI forms.)

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use super::*;

struct Layers {
    _tmp: tempfile::TempDir,
    lower0: PathBuf,
    lower1: PathBuf,
    upper: PathBuf,
    fs: OverlayFs,
}

fn layers(setup: impl FnOnce(&Path, &Path)) -> Layers {
    let tmp = tempfile::tempdir().unwrap();
    let mk = |n: &str| {
        let p = tmp.path().join(n);
        fs::create_dir(&p).unwrap();
        p
    };
    let (lower0, lower1, upper, work) = (mk("l0"), mk("l1"), mk("u"), mk("w"));
    setup(&lower0, &lower1);
    let fs = OverlayFs::new(OverlayConfig::new(
        vec![lower0.clone(), lower1.clone()],
        upper.clone(),
        work,
    ))
    .unwrap();
    Layers {
        _tmp: tmp,
        lower0,
        lower1,
        upper,
        fs,
    }
}

fn names(fs: &OverlayFs, ino: u64) -> Vec<(String, u64)> {
    let fh = fs.opendir(ino).unwrap();
    let mut out = Vec::new();
    fs.readdir(fh, 0, |e, _| {
        if e.name != "." && e.name != ".." {
            out.push((e.name.to_string_lossy().to_string(), e.ino));
        }
        false
    })
    .unwrap();
    fs.releasedir(fh);
    out.sort();
    out
}

fn errno_of<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
    r.unwrap_err().raw_os_error().unwrap()
}

fn tree(p: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        v.push(e.file_name().to_string_lossy().to_string());
        if e.file_type().unwrap().is_dir() {
            for s in tree(&e.path()) {
                v.push(format!("{}/{s}", e.file_name().to_string_lossy()));
            }
        }
    }
    v.sort();
    v
}

#[test]
fn lookup_and_readdir_merge_with_oci_whiteouts_and_opaque_markers() {
    let l = layers(|l0, l1| {
        fs::write(l0.join("a"), "top").unwrap();
        fs::write(l1.join("a"), "bottom").unwrap();
        fs::write(l1.join("b"), "b").unwrap();
        fs::write(l0.join(".wh.gone"), "").unwrap();
        fs::write(l1.join("gone"), "g").unwrap();
        fs::create_dir_all(l0.join("o")).unwrap();
        fs::write(l0.join("o/.wh..wh..opq"), "").unwrap();
        fs::write(l0.join("o/mine"), "").unwrap();
        fs::create_dir_all(l1.join("o")).unwrap();
        fs::write(l1.join("o/hidden"), "").unwrap();
    });
    let root = ROOT_INO;
    let listed = names(&l.fs, root);
    let shown: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(shown, ["a", "b", "o"]);
    assert_eq!(
        errno_of(l.fs.lookup(root, OsStr::new("gone"))),
        libc::ENOENT
    );
    assert_eq!(
        errno_of(l.fs.lookup(root, OsStr::new(".wh.gone"))),
        libc::ENOENT
    );
    let a = l.fs.lookup(root, OsStr::new("a")).unwrap();
    assert_eq!(a.attr.size, 3);
    // readdir and lookup agree on inode numbers.
    for (name, ino) in &listed {
        assert_eq!(l.fs.lookup(root, OsStr::new(name)).unwrap().attr.ino, *ino);
    }
    let o = l.fs.lookup(root, OsStr::new("o")).unwrap();
    let inside: Vec<String> = names(&l.fs, o.attr.ino)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(inside, ["mine"]);
}

#[test]
fn lookup_counts_and_stable_numbers() {
    let l = layers(|_, l1| fs::write(l1.join("f"), "x").unwrap());
    let e1 = l.fs.lookup(ROOT_INO, OsStr::new("f")).unwrap();
    let e2 = l.fs.lookup(ROOT_INO, OsStr::new("f")).unwrap();
    assert_eq!(e1.attr.ino, e2.attr.ino);
    assert_eq!(l.fs.live_inodes(), 2);
    l.fs.forget(e1.attr.ino, 1);
    assert!(l.fs.getattr(e1.attr.ino).is_ok());
    l.fs.forget(e1.attr.ino, 1);
    assert_eq!(errno_of(l.fs.getattr(e1.attr.ino)), libc::ESTALE);
    assert_eq!(l.fs.live_inodes(), 1);
    // Looked up again after being forgotten: the same number.
    assert_eq!(
        l.fs.lookup(ROOT_INO, OsStr::new("f")).unwrap().attr.ino,
        e1.attr.ino
    );
    // Lower entries are cached long, upper ones briefly.
    assert_eq!(e1.entry_ttl, Duration::from_secs(600));
}

#[test]
fn copy_up_on_chmod_keeps_number_data_and_lower() {
    let l = layers(|_, l1| {
        fs::create_dir(l1.join("d")).unwrap();
        fs::write(l1.join("d/f"), "data").unwrap();
    });
    let d = l.fs.lookup(ROOT_INO, OsStr::new("d")).unwrap();
    let f = l.fs.lookup(d.attr.ino, OsStr::new("f")).unwrap();
    let set = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    let a = l.fs.setattr(f.attr.ino, None, &set).unwrap();
    assert_eq!(a.ino, f.attr.ino);
    assert_eq!(a.perm, 0o600);
    assert_eq!(fs::read(l.upper.join("d/f")).unwrap(), b"data");
    assert_eq!(fs::read(l.lower1.join("d/f")).unwrap(), b"data");
    let lower_mode = fs::metadata(l.lower1.join("d/f")).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&lower_mode) & 0o777,
        0o644
    );
    let again = l.fs.lookup(d.attr.ino, OsStr::new("f")).unwrap();
    assert_eq!(again.attr.ino, f.attr.ino);
    assert_eq!(again.entry_ttl, Duration::from_secs(1));
}

#[test]
fn unlink_rmdir_and_recreate_as_opaque() {
    let l = layers(|l0, l1| {
        fs::write(l0.join("f"), "x").unwrap();
        fs::create_dir(l1.join("d")).unwrap();
        fs::write(l1.join("d/inner"), "i").unwrap();
    });
    l.fs.unlink(ROOT_INO, OsStr::new("f")).unwrap();
    assert_eq!(
        errno_of(l.fs.lookup(ROOT_INO, OsStr::new("f"))),
        libc::ENOENT
    );
    assert_eq!(
        errno_of(l.fs.rmdir(ROOT_INO, OsStr::new("d"))),
        libc::ENOTEMPTY
    );
    let d = l.fs.lookup(ROOT_INO, OsStr::new("d")).unwrap();
    l.fs.unlink(d.attr.ino, OsStr::new("inner")).unwrap();
    l.fs.rmdir(ROOT_INO, OsStr::new("d")).unwrap();
    assert!(names(&l.fs, ROOT_INO).is_empty());
    let d2 =
        l.fs.mkdir(ROOT_INO, OsStr::new("d"), 0o755, Caller::ROOT)
            .unwrap();
    assert!(
        names(&l.fs, d2.attr.ino).is_empty(),
        "new directory must be opaque"
    );
    assert!(l.lower1.join("d/inner").exists());
    assert!(l.lower0.join("f").exists());
}

#[test]
fn rename_of_lower_directory_copies_the_merged_tree() {
    let l = layers(|l0, l1| {
        fs::create_dir_all(l0.join("d/sub")).unwrap();
        fs::write(l0.join("d/sub/x"), "x").unwrap();
        fs::create_dir_all(l1.join("d")).unwrap();
        fs::write(l1.join("d/y"), "y").unwrap();
    });
    let before0 = tree(&l.lower0);
    l.fs.rename(ROOT_INO, OsStr::new("d"), ROOT_INO, OsStr::new("e"), 0)
        .unwrap();
    assert_eq!(
        errno_of(l.fs.lookup(ROOT_INO, OsStr::new("d"))),
        libc::ENOENT
    );
    let e = l.fs.lookup(ROOT_INO, OsStr::new("e")).unwrap();
    let inside: Vec<String> = names(&l.fs, e.attr.ino)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(inside, ["sub", "y"]);
    assert_eq!(tree(&l.upper.join("e")), ["sub", "sub/x", "y"]);
    assert_eq!(tree(&l.lower0), before0);
    // A new "d" shows nothing of the lower ones.
    let d =
        l.fs.mkdir(ROOT_INO, OsStr::new("d"), 0o755, Caller::ROOT)
            .unwrap();
    assert!(names(&l.fs, d.attr.ino).is_empty());
}

#[test]
fn create_write_read_through_handles() {
    let l = layers(|_, l1| fs::write(l1.join("f"), "lower").unwrap());
    let (e, o) =
        l.fs.create(ROOT_INO, OsStr::new("n"), 0o640, libc::O_RDWR, Caller::ROOT)
            .unwrap();
    assert_eq!(l.fs.write(o.fh, 0, b"hello", false).unwrap(), 5);
    assert_eq!(l.fs.read(o.fh, 1, 10).unwrap(), b"ello");
    l.fs.release(o.fh);
    assert_eq!(e.attr.perm, 0o640);
    let f = l.fs.lookup(ROOT_INO, OsStr::new("f")).unwrap();
    let ro = l.fs.open(f.attr.ino, libc::O_RDONLY, Caller::ROOT).unwrap();
    assert!(!ro.upper);
    let rw = l.fs.open(f.attr.ino, libc::O_WRONLY, Caller::ROOT).unwrap();
    assert!(rw.upper);
    l.fs.write(rw.fh, 0, b"UPPER", false).unwrap();
    // The read handle opened on the lower file follows the copy-up.
    assert_eq!(l.fs.read(ro.fh, 0, 10).unwrap(), b"UPPER");
    assert_eq!(errno_of(l.fs.read(999, 0, 1)), libc::EBADF);
}
