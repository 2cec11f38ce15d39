//! Owner id mapping (`uidmapping=` / `gidmapping=`) on a real FUSE mount (root): the
//! mount shows stored owners shifted, stores the owners callers give shifted back,
//! refuses owners outside the mapping, and a user namespace with the same map sees
//! the layers' own owners.

mod overlay_harness;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use fuse_overlay::overlay::idmap::IdMap;
use fuse_overlay::overlay::{Backend, Error, Layers, MountOptions, Overlay};
use overlay_harness::Fixture;

/// Users 0..65536 of the layers show as 100000.., groups as 200000.. (different bases
/// catch a user/group mix-up).
const UID_MAP: &str = "0:100000:65536";
const GID_MAP: &str = "0:200000:65536";

fn owner(path: &Path) -> (u32, u32) {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (md.uid(), md.gid())
}

/// Runs `cmd` as `uid`/`gid` (no supplementary groups); returns success and stderr.
fn run_as(uid: u32, gid: u32, cmd: &[&str]) -> (bool, String) {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .args(cmd)
        .output()
        .expect("setpriv");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `stat -c '%n %u:%g' PATHS` in a new user namespace whose users 0..65536 are this
/// one's 100000.. and groups 0..65536 are 200000.. (the maps written by us, as root,
/// before the command goes on); returns its output.
fn stat_in_userns(paths: &[&Path]) -> String {
    use std::io::Write;
    let mut child = Command::new("unshare")
        .args([
            "--user",
            "sh",
            "-c",
            "read go && exec stat -c '%n %u:%g' \"$@\"",
            "sh",
        ])
        .args(paths)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("unshare");
    let ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/user")).ok();
    let pid = child.id().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ns(&pid) == ns("self") {
        assert!(
            std::time::Instant::now() < deadline,
            "no new user namespace"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    fs::write(format!("/proc/{pid}/uid_map"), "0 100000 65536\n").unwrap();
    fs::write(format!("/proc/{pid}/gid_map"), "0 200000 65536\n").unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stored owners of [`layers`] are shown shifted by [`UID_MAP`]/[`GID_MAP`]; one
/// outside the mapping as the overflow id.
fn assert_layer_owners_shown(mnt: &Path) {
    assert_eq!(owner(&mnt.join("root-file")), (100000, 200000));
    assert_eq!(owner(&mnt.join("user-file")), (101000, 201001));
    assert_eq!(owner(&mnt.join("stranger")), (65534, 65534));
}

/// A temporary directory (reachable by every user, as the unprivileged callers must
/// reach the mount point) with empty `upper`, `work` and `mnt` directories.
fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let [upper, work, mnt] = ["upper", "work", "mnt"].map(|n| tmp.path().join(n));
    for d in [&upper, &work, &mnt] {
        fs::create_dir(d).unwrap();
    }
    (tmp, upper, work, mnt)
}

fn layers() -> Fixture {
    let f = Fixture::new(1);
    f.file(0, "root-file", "r")
        .file(0, "user-file", "u")
        .file(0, "stranger", "s")
        .dir(0, "pub")
        .dir(0, "pub2")
        .dir(0, "sg")
        .chown(0, "user-file", 1000, 1001)
        .chown(0, "stranger", 70000, 70001)
        .chown(0, "sg", 0, 42)
        .chmod(0, "pub", 0o777)
        .chmod(0, "pub2", 0o777)
        .chmod(0, "sg", 0o2777);
    f
}

#[test]
fn mapped_owners_on_the_fuse_overlay() {
    overlay_harness::require_root();
    let f = layers();
    let (_tmp, upper, work, mnt) = dirs();
    let options = MountOptions {
        uid_map: IdMap::parse(UID_MAP).unwrap(),
        gid_map: IdMap::parse(GID_MAP).unwrap(),
        ..MountOptions::default()
    };
    let layers = Layers::writable(f.lowers.clone(), upper.clone(), work.clone());
    let guard = Overlay::mount(Backend::Fuse, &layers, &mnt, &options).expect("mount");

    // First a listing with owners (READDIRPLUS attributes, nothing looked up before).
    let ls = Command::new("ls").arg("-ln").arg(&mnt).output().unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout);
    let owners_of = |name: &str| -> String {
        let line = ls
            .lines()
            .find(|l| l.ends_with(&format!(" {name}")))
            .unwrap_or_else(|| panic!("{name} not listed:\n{ls}"));
        let f: Vec<&str> = line.split_whitespace().collect();
        format!("{}:{}", f[2], f[3])
    };
    assert_eq!(owners_of("root-file"), "100000:200000");
    assert_eq!(owners_of("user-file"), "101000:201001");
    assert_eq!(owners_of("stranger"), "65534:65534");

    assert_layer_owners_shown(&mnt);
    assert_eq!(owner(&mnt.join("pub")), (100000, 200000));

    // Files, directories, symlinks and fifos made by a mapped user are stored under the
    // layer's ids of that user; in a setgid directory the group is the directory's.
    let p = |rel: &str| mnt.join(rel).to_str().unwrap().to_string();
    for (cmd, rel, stored) in [
        (vec!["touch"], "pub/new", (5, 7)),
        (vec!["mkdir"], "pub/dir", (5, 7)),
        (vec!["ln", "-s", "new"], "pub/ln", (5, 7)),
        (vec!["mkfifo"], "pub/fifo", (5, 7)),
        (vec!["touch"], "sg/f", (5, 42)),
    ] {
        let target = p(rel);
        let args: Vec<&str> = cmd.iter().copied().chain([target.as_str()]).collect();
        let (ok, err) = run_as(100005, 200007, &args);
        assert!(ok, "{args:?} as 100005: {err}");
        assert_eq!(owner(&upper.join(rel)), stored, "{rel} as stored");
        assert_eq!(
            owner(&mnt.join(rel)),
            (100000 + stored.0, 200000 + stored.1),
            "{rel} as shown"
        );
    }
    // A setuid file made by a mapped user keeps its bit although the daemon chowns it.
    let script = format!(
        "import os; os.umask(0); os.close(os.open({:?}, os.O_CREAT | os.O_WRONLY, 0o4755))",
        mnt.join("pub/suid").to_str().unwrap()
    );
    let (ok, err) = run_as(100005, 200007, &["/usr/bin/python3", "-c", &script]);
    assert!(ok, "setuid create: {err}");
    let md = fs::symlink_metadata(upper.join("pub/suid")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (5, 7, 0o4755));

    // A hard link keeps its inode's owner.
    fs::hard_link(mnt.join("pub/new"), mnt.join("pub/new-link")).unwrap();
    assert_eq!(owner(&mnt.join("pub/new-link")), (100005, 200007));
    assert_eq!(owner(&upper.join("pub/new-link")), (5, 7));

    // A user outside the mapping cannot own anything here: EOVERFLOW, nothing made —
    // not even the copy-up of the parent directory.
    let (ok, err) = run_as(5, 7, &["touch", mnt.join("pub2/nope").to_str().unwrap()]);
    assert!(!ok, "touch by an unmapped user succeeded");
    assert!(err.contains("Value too large"), "{err}");
    assert!(
        !upper.join("pub2").exists(),
        "parent copied up for a refused create"
    );
    assert!(!mnt.join("pub2/nope").exists());
    let (ok, _) = run_as(5, 7, &["mkdir", mnt.join("pub/nope").to_str().unwrap()]);
    assert!(!ok, "mkdir by an unmapped user succeeded");
    assert!(!upper.join("pub/nope").exists());

    // chown through the mount stores the shifted-back ids in the upper copy only.
    nix::unistd::chown(
        &mnt.join("root-file"),
        Some(101234.into()),
        Some(201234.into()),
    )
    .unwrap();
    assert_eq!(owner(&upper.join("root-file")), (1234, 1234));
    assert_eq!(owner(&mnt.join("root-file")), (101234, 201234));
    assert_eq!(owner(&f.lowers[0].join("root-file")), (0, 0));
    // An owner outside the mapping is refused with EINVAL and changes nothing.
    let e = nix::unistd::chown(&mnt.join("user-file"), Some(5.into()), None).unwrap_err();
    assert_eq!(e, nix::errno::Errno::EINVAL);
    assert!(!upper.join("user-file").exists(), "refused chown copied up");
    let e = nix::unistd::chown(&mnt.join("user-file"), None, Some(300000.into())).unwrap_err();
    assert_eq!(e, nix::errno::Errno::EINVAL);

    // Copy-up keeps the stored owner.
    fs::set_permissions(mnt.join("user-file"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(owner(&upper.join("user-file")), (1000, 1001));
    assert_eq!(owner(&mnt.join("user-file")), (101000, 201001));

    // A user namespace mapping 100000.. (200000.. for groups) to 0.. sees the layers'
    // own owners: what a rootless container with that namespace gets.
    let out = stat_in_userns(&[
        &mnt.join("root-file"),
        &mnt.join("user-file"),
        &mnt.join("pub/new"),
    ]);
    let text = out;
    let seen: Vec<&str> = text
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(seen, ["1234:1234", "1000:1001", "5:7"], "{text}");

    guard.unmount().expect("unmount");

    // The kernel back end cannot map ids: refused, nothing mounted.
    let kernel = Overlay::mount(Backend::Kernel, &layers, &mnt, &options);
    assert!(
        matches!(kernel, Err(Error::Unsupported { .. })),
        "kernel back end accepted an id mapping"
    );
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(mnt.to_str().unwrap()), "{mounts}");
}

/// `stowage-overlay -o …,uidmapping=…,gidmapping=…` as container tools pass it, with the
/// manual's comma between triples.
#[test]
fn stowage_overlay_binary_maps_ids() {
    overlay_harness::require_root();
    let f = layers();
    let (tmp, upper, work, mnt) = dirs();
    fs::create_dir(tmp.path().join("m2")).unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},uidmapping=0:100000:1000,1000:101000:64536,gidmapping={GID_MAP}",
        f.lowers[0].display(),
        upper.display(),
        work.display()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_stowage-overlay"))
        .arg("-o")
        .arg(&opts)
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(out.status.success(), "stowage-overlay: {out:?}");
    let _guard = overlay_harness::LazyUnmount(mnt.clone());
    assert_layer_owners_shown(&mnt);
    let (ok, err) = run_as(
        100042,
        200042,
        &["touch", mnt.join("pub/x").to_str().unwrap()],
    );
    assert!(ok, "{err}");
    assert_eq!(owner(&upper.join("pub/x")), (42, 42));

    // A bad mapping is refused with the reason, and nothing is mounted.
    let bad = Command::new(env!("CARGO_BIN_EXE_stowage-overlay"))
        .arg("-o")
        .arg(format!(
            "lowerdir={},upperdir={},workdir={},uidmapping=0:100000:10:5:200000:10",
            f.lowers[0].display(),
            upper.display(),
            work.display()
        ))
        .arg(tmp.path().join("m2"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("overlap"), "{stderr}");
}
