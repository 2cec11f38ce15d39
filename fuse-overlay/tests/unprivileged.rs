//! stowage-overlay run by an unprivileged user, as rootless container tools run it:
//! the mount goes through the setuid `fusermount3`, passthrough is off, whiteouts
//! are `.wh.` files (an unprivileged user cannot make the 0/0 character device), and
//! the user unmounts with `fusermount3 -u`.
//!
//! The test runs as root to set the scene: layers owned by the test user, and
//! `/dev/fuse` readable and writable by everyone (Debian's default, 0666) for the
//! test's duration — some machines (this project's CI VM) ship it 0600, which stops
//! every unprivileged FUSE mount; the previous mode is restored on drop.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

mod overlay_harness;

/// `nobody`, which every Debian system has (fusermount3 wants the user's name).
const USER: u32 = 65534;

/// Restores `/dev/fuse`'s mode when dropped.
struct DevFuseMode(u32);

impl DevFuseMode {
    fn open_to_all() -> Self {
        let meta = std::fs::metadata("/dev/fuse").expect("/dev/fuse exists");
        let old = meta.permissions().mode() & 0o7777;
        std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
        DevFuseMode(old)
    }
}

impl Drop for DevFuseMode {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(self.0));
    }
}

/// Runs `program args` as the test user, with no supplementary groups.
fn as_user(program: &str, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid",
            &USER.to_string(),
            "--regid",
            &USER.to_string(),
            "--clear-groups",
            "--",
            program,
        ])
        .args(args)
        .output()
        .expect("run setpriv")
}

fn sh(script: &str) -> String {
    let out = as_user("sh", &["-c", script]);
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn mount_line(mnt: &Path) -> Option<String> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(mnt.to_str().unwrap()))
        .map(str::to_string)
}

#[test]
fn an_unprivileged_user_mounts_through_fusermount3_and_unmounts() {
    overlay_harness::require_root();
    let _fuse = DevFuseMode::open_to_all();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = |n: &str| -> PathBuf { tmp.path().join(n) };
    for d in ["lower", "lower/sub", "upper", "work", "mnt"] {
        std::fs::create_dir(dir(d)).unwrap();
    }
    std::fs::write(dir("lower/f"), "lower data\n").unwrap();
    std::fs::write(dir("lower/sub/g"), "g\n").unwrap();
    for d in [
        "lower",
        "lower/sub",
        "lower/f",
        "lower/sub/g",
        "upper",
        "work",
        "mnt",
    ] {
        std::os::unix::fs::chown(dir(d), Some(USER), Some(USER)).unwrap();
    }
    let mnt = dir("mnt");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        dir("lower").display(),
        dir("upper").display(),
        dir("work").display()
    );
    let out = as_user(
        env!("CARGO_BIN_EXE_stowage-overlay"),
        &["-o", &opts, mnt.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "stowage-overlay as uid {USER}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let guard = overlay_harness::LazyUnmount(mnt.clone());
    let line = mount_line(&mnt).expect("mounted");
    assert!(line.contains(" fuse.stowage-overlay "), "{line}");
    assert!(
        line.contains(&format!("user_id={USER}")),
        "mounted by the user: {line}"
    );
    // The daemon runs as the user, not as root.
    let pids = Command::new("pgrep")
        .args(["-f", &format!("stowage-overlay.*{}", mnt.display())])
        .output()
        .unwrap();
    let pid = String::from_utf8(pids.stdout).unwrap();
    let pid = pid.lines().next().expect("daemon running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|u| u == USER.to_string()),
        "{uid_line}"
    );

    let m = mnt.display();
    assert_eq!(sh(&format!("cat {m}/f")), "lower data\n");
    // Copy-up on append, a new file, a whiteout for a removed lower file, a renamed
    // lower directory.
    sh(&format!(
        "echo more >> {m}/f && echo new > {m}/n && rm {m}/sub/g && mv {m}/sub {m}/moved"
    ));
    assert_eq!(sh(&format!("cat {m}/f")), "lower data\nmore\n");
    assert_eq!(sh(&format!("ls {m}")), "f\nmoved\nn\n");
    assert_eq!(sh(&format!("ls -A {m}/moved")), "");
    let up = std::fs::read_to_string(dir("upper/f")).unwrap();
    assert_eq!(up, "lower data\nmore\n");
    assert_eq!(std::fs::metadata(dir("upper/f")).unwrap().uid(), USER);
    assert_eq!(
        std::fs::read_to_string(dir("lower/f")).unwrap(),
        "lower data\n"
    );
    // Whiteouts are `.wh.` files: no device node is made without privilege.
    let wh = std::fs::symlink_metadata(dir("upper/.wh.sub")).expect("whiteout of sub");
    assert!(wh.is_file(), "{wh:?}");

    // The user unmounts; the daemon exits.
    let mut done = false;
    for _ in 0..20 {
        let out = as_user("fusermount3", &["-u", mnt.to_str().unwrap()]);
        if out.status.success() {
            done = true;
            break;
        }
        // FUSE releases closed files asynchronously: a moment of EBUSY.
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(done, "fusermount3 -u failed");
    std::mem::forget(guard);
    assert!(mount_line(&mnt).is_none());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "daemon still running after unmount"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
