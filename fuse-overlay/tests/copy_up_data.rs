//! Copy-up of file data on real filesystems (root: loop devices and mounts): the three
//! ways data is copied — a direct read for small files not in the page cache, the
//! page cache for the rest, a reflink where upper and lower share a filesystem that
//! can — each checked for the bytes it produces and, where the way leaves a trace
//! (the lower file's page cache, shared extents), for the way it took. Needs Linux 6.5
//! (`cachestat`).

mod overlay_harness;

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use fuse_overlay::overlay::{Backend, Layers, MountGuard, MountOptions, Overlay};

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A filesystem of `fstype` on a loop device over a sparse image, mounted; detached and
/// removed on drop, also after a failed assertion.
struct LoopFs {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
    dev: Option<String>,
    mounted: bool,
}

impl LoopFs {
    fn new(fstype: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ovl-copyup-")
            .tempdir()
            .expect("tempdir");
        let img = dir.path().join("fs.img");
        File::create(&img)
            .and_then(|f| f.set_len(512 << 20))
            .expect("image");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let mut me = LoopFs {
            _dir: dir,
            mnt,
            dev: None,
            mounted: false,
        };
        let dev = run("losetup", &["--find", "--show", img.to_str().unwrap()]);
        me.dev = Some(dev.trim().to_string());
        let dev = me.dev.clone().unwrap();
        let force = if fstype == "ext4" { "-F" } else { "-f" };
        run(&format!("mkfs.{fstype}"), &["-q", force, &dev]);
        run("mount", &[&dev, me.mnt.to_str().unwrap()]);
        me.mounted = true;
        me
    }

    fn dir(&self, name: &str) -> PathBuf {
        let p = self.mnt.join(name);
        fs::create_dir(&p).unwrap();
        p
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        }
        if let Some(dev) = &self.dev {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
    }
}

/// Deterministic bytes, different for each `seed`.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Pages of `path` in the page cache (util-linux `fincore`).
fn cached_pages(path: &Path) -> u64 {
    run(
        "fincore",
        &[
            "--raw",
            "--noheadings",
            "--output",
            "PAGES",
            path.to_str().unwrap(),
        ],
    )
    .trim()
    .parse()
    .expect("fincore pages")
}

/// Writes `path` to disk and drops its pages from the cache.
fn evict(path: &Path) {
    let f = File::open(path).unwrap();
    f.sync_all().unwrap();
    nix::fcntl::posix_fadvise(
        &f,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .unwrap();
    assert_eq!(cached_pages(path), 0, "{} still cached", path.display());
}

/// Mounts our FUSE overlay of `lower` with upper and work directories next to it.
fn mount(disk: &LoopFs, lower: &Path) -> (MountGuard, PathBuf) {
    let layers = Layers::writable(
        vec![lower.to_path_buf()],
        disk.dir("upper"),
        disk.dir("work"),
    );
    let mnt = disk.dir("merged");
    let guard = Overlay::mount(Backend::Fuse, &layers, &mnt, &MountOptions::default())
        .expect("FUSE overlay mount");
    (guard, mnt)
}

/// Appends `tail` to `path` (a copy-up when it is a lower file).
fn append(path: &Path, tail: &[u8]) {
    let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(tail).unwrap();
}

#[test]
fn small_uncached_files_are_copied_up_without_caching_the_lower_file() {
    overlay_harness::require_root();
    let disk = LoopFs::new("ext4");
    let lower = disk.dir("lower");
    // Sizes around the page and the direct-copy limit (1 MiB): one byte, a page less
    // one, a page, unaligned, 64 KiB, just over, the limit, and one past it (copied
    // through the page cache, by extents).
    let sizes = [
        1usize,
        4095,
        4096,
        5000,
        65536,
        65537,
        1 << 20,
        (1 << 20) + 1,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        fs::write(lower.join(format!("f{i}")), pattern(size, i as u64)).unwrap();
    }
    // A file read just before its copy-up (in the cache): copied through the cache.
    fs::write(lower.join("warm"), pattern(300_000, 99)).unwrap();
    // A large sparse file: holes must stay holes.
    let sparse = lower.join("sparse");
    {
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&sparse)
            .unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&pattern(8192, 7), 0).unwrap();
        f.write_all_at(&pattern(8192, 8), 32 << 20).unwrap();
    }
    for entry in fs::read_dir(&lower).unwrap() {
        evict(&entry.unwrap().path());
    }
    let (guard, mnt) = mount(&disk, &lower);
    let _ = fs::read(mnt.join("warm")).unwrap();
    for (i, &size) in sizes.iter().enumerate() {
        let name = format!("f{i}");
        append(&mnt.join(&name), b"tail");
        let mut want = pattern(size, i as u64);
        want.extend_from_slice(b"tail");
        assert_eq!(
            fs::read(mnt.join(&name)).unwrap(),
            want,
            "{name} ({size} bytes)"
        );
        let upper = disk.mnt.join("upper").join(&name);
        assert_eq!(fs::read(&upper).unwrap(), want, "upper copy of {name}");
        let cached = cached_pages(&lower.join(&name));
        if size <= 1 << 20 {
            assert_eq!(
                cached, 0,
                "{name} ({size} bytes) went through the page cache"
            );
        } else {
            assert!(
                cached > 0,
                "{name} ({size} bytes) was expected in the cache"
            );
        }
    }
    append(&mnt.join("warm"), b"tail");
    let mut want = pattern(300_000, 99);
    want.extend_from_slice(b"tail");
    assert_eq!(fs::read(mnt.join("warm")).unwrap(), want);

    append(&mnt.join("sparse"), b"tail");
    let md = fs::metadata(mnt.join("sparse")).unwrap();
    assert_eq!(md.len(), (32 << 20) + 8192 + 4);
    assert_eq!(md.mode() & 0o7777, 0o640);
    let data = fs::read(mnt.join("sparse")).unwrap();
    assert_eq!(&data[..8192], &pattern(8192, 7)[..]);
    assert!(data[8192..32 << 20].iter().all(|b| *b == 0));
    assert_eq!(&data[32 << 20..(32 << 20) + 8192], &pattern(8192, 8)[..]);
    let upper_md = fs::metadata(disk.mnt.join("upper/sparse")).unwrap();
    assert!(
        upper_md.blocks() * 512 < 1 << 20,
        "holes filled in the copy: {} blocks",
        upper_md.blocks()
    );
    guard.unmount().expect("unmount");
}

/// Dirty pages of `path` (written, not yet on disk).
fn dirty_pages(path: &Path) -> u64 {
    let f = File::open(path).unwrap();
    fuse_overlay::overlay::sys::page_cache(&f, 0)
        .expect("cachestat")
        .dirty
}

/// A copy-up is on disk before its name is (kernel overlayfs's fsync after copy-up):
/// otherwise a crash could leave an empty or partial upper file shadowing the intact
/// lower one. `volatile` skips that, and its copy is still only in the page cache.
#[test]
fn copy_up_is_durable_unless_volatile() {
    overlay_harness::require_root();
    let disk = LoopFs::new("ext4");
    let lower = disk.dir("lower");
    let data = pattern(256 << 10, 3);
    fs::write(lower.join("f"), &data).unwrap();
    evict(&lower.join("f"));
    for volatile in [false, true] {
        let tag = if volatile { "volatile" } else { "default" };
        let layers = Layers::writable(
            vec![lower.clone()],
            disk.dir(&format!("upper-{tag}")),
            disk.dir(&format!("work-{tag}")),
        );
        let mnt = disk.dir(&format!("merged-{tag}"));
        let options = MountOptions {
            volatile,
            ..MountOptions::default()
        };
        let guard = Overlay::mount(Backend::Fuse, &layers, &mnt, &options).expect("mount");
        // A change of metadata only: the copy-up writes the data, nothing else does.
        fs::set_permissions(
            mnt.join("f"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let upper = disk.mnt.join(format!("upper-{tag}/f"));
        assert_eq!(fs::read(&upper).unwrap(), data, "{tag}");
        let dirty = dirty_pages(&upper);
        if volatile {
            // Writeback waits 30 s (dirty_expire_centisecs) for data this fresh.
            assert!(dirty > 0, "volatile copy-up was synced");
        } else {
            assert_eq!(dirty, 0, "copy-up left {dirty} dirty pages");
        }
        guard.unmount().expect("unmount");
    }
}

/// Whether every extent of `path` is shared with another file (`filefrag -v`).
fn all_extents_shared(path: &Path) -> bool {
    let out = run("filefrag", &["-v", path.to_str().unwrap()]);
    let extents: Vec<&str> = out
        .lines()
        .filter(|l| {
            l.trim_start()
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
        .filter(|l| l.contains(':'))
        .collect();
    !extents.is_empty() && extents.iter().all(|l| l.contains("shared"))
}

fn reflink_copy_up(fstype: &str) {
    overlay_harness::require_root();
    let disk = LoopFs::new(fstype);
    let lower = disk.dir("lower");
    let want = pattern(8 << 20, 5);
    fs::write(lower.join("big"), &want).unwrap();
    fs::write(lower.join("small"), pattern(20_000, 6)).unwrap();
    evict(&lower.join("big"));
    evict(&lower.join("small"));
    let (guard, mnt) = mount(&disk, &lower);
    // A change of metadata only: the copy shares all its data with the lower file.
    fs::set_permissions(
        mnt.join("big"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    append(&mnt.join("small"), b"tail");
    guard.unmount().expect("unmount");
    run("sync", &[]);
    let upper = disk.mnt.join("upper");
    assert_eq!(fs::read(upper.join("big")).unwrap(), want);
    assert!(
        all_extents_shared(&upper.join("big")),
        "{fstype}: copy-up did not reflink:\n{}",
        run("filefrag", &["-v", upper.join("big").to_str().unwrap()])
    );
    let mut small = pattern(20_000, 6);
    small.extend_from_slice(b"tail");
    assert_eq!(fs::read(upper.join("small")).unwrap(), small);
    // The reflink read nothing: the lower file is still not cached.
    assert_eq!(cached_pages(&lower.join("big")), 0);
}

#[test]
fn copy_up_reflinks_on_btrfs() {
    reflink_copy_up("btrfs");
}

#[test]
fn copy_up_reflinks_on_xfs() {
    reflink_copy_up("xfs");
}
