//! A loop device bound by a process in another mount namespace, through a bind
//! mount, is found again by the file it backs (root, real loop devices).
//!
//! This is a node daemon restarted in a new container: the kernel names the backing
//! file by the old container's path below its bind mount (`/images/volumes/…`), which
//! the new daemon cannot match by path. Found only by path, the restarted daemon
//! bound a second loop device to an image whose filesystem was mounted through the
//! first (seen on a real Kubernetes node: 90 devices on one image).

use std::path::{Path, PathBuf};
use std::process::Command;

use stowage_tests::require_root;
use volume_core::os::{LoopControl, RealLoopControl};

/// Detaches the device on drop, also when an assertion fails.
struct Detach(String);

impl Drop for Detach {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn path_env() -> String {
    format!(
        "{}:/usr/sbin:/sbin",
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Kills and reaps the process on drop.
struct Alive(std::process::Child);

impl Drop for Alive {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Binds `image` (a path below `view`, which the child mounts `real` on) to a loop
/// device from a private mount namespace, which lives on (a process stays in it)
/// until the returned guard is dropped; returns the device and the guard.
fn bind_from_a_live_namespace(real: &Path, view: &Path, image: &Path) -> (String, Alive) {
    use std::io::BufRead;
    let script = format!(
        "mount --bind '{}' '{}' && losetup -f --show '{}' && exec sleep 600",
        real.display(),
        view.display(),
        image.display()
    );
    let mut child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env("PATH", path_env())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("unshare");
    let stdout = child.stdout.take().unwrap();
    let alive = Alive(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let device = line.trim().to_string();
    assert!(
        device.starts_with("/dev/loop"),
        "losetup printed '{device}'"
    );
    (device, alive)
}

/// As `bind_from_a_live_namespace`, the namespace gone when it returns (the
/// daemon's old container): the kernel then names the file by its path below the
/// bind mount.
fn bind_from_another_namespace(real: &Path, view: &Path, image: &Path) -> String {
    let (device, alive) = bind_from_a_live_namespace(real, view, image);
    drop(alive);
    device
}

/// What this namespace reads for `device`.
fn listed(loops: &RealLoopControl, device: &str) -> volume_core::os::LoopInfo {
    loops
        .list()
        .unwrap()
        .into_iter()
        .find(|l| l.device == Path::new(device))
        .expect("the device is listed")
}

#[test]
fn a_loop_device_bound_through_another_namespace_is_found_by_its_file() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    let view = dir.path().join("view");
    let volume = real.join("images/volumes/v-1");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::create_dir_all(&view).unwrap();
    let image: PathBuf = volume.join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();

    let device =
        bind_from_another_namespace(&real, &view, &view.join("images/volumes/v-1/disk.img"));
    let _detach = Detach(device.clone());
    let loops = RealLoopControl::new("/dev", "/sys");
    // What this namespace reads for it once the child's namespace is released (the
    // kernel does that a little after the child is reaped): the path below its bind
    // mount.
    let below = Path::new("/images/volumes/v-1/disk.img");
    let mut seen = listed(&loops, &device);
    for _ in 0..100 {
        if seen.backing_file == below {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        seen = listed(&loops, &device);
    }
    assert_eq!(seen.backing_file, below);

    let found = loops.find(&image).unwrap();
    assert_eq!(
        found.iter().map(|l| l.device.clone()).collect::<Vec<_>>(),
        [PathBuf::from(&device)],
        "the device bound through the other namespace is found by its file"
    );
    // Another file with the same tail is not it.
    let other = dir.path().join("elsewhere/images/volumes/v-1");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("disk.img"), b"x").unwrap();
    assert!(loops.find(&other.join("disk.img")).unwrap().is_empty());
}

#[test]
fn a_loop_device_bound_at_the_same_path_in_another_namespace_is_not_ours() {
    // Two daemons on one kernel (two nodes of a test cluster, two containers), each
    // with its own state directory bound at the same path: the kernel names the
    // other's device by exactly this daemon's path for its own file. Found by path,
    // the second node of a real test cluster adopted the first node's pool device
    // and mounted the first node's pool.
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("node-1");
    let state = dir.path().join("state");
    let rel = "images/volumes/v-1/disk.img";
    for root in [&theirs, &state] {
        std::fs::create_dir_all(root.join("images/volumes/v-1")).unwrap();
        std::fs::File::create(root.join(rel))
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
    }
    let mine = state.join(rel).canonicalize().unwrap();

    // The other namespace stays alive (its daemon still runs), so the kernel can
    // still name the file by its full path there.
    let (device, _alive) = bind_from_a_live_namespace(&theirs, &state, &state.join(rel));
    let _detach = Detach(device.clone());
    let loops = RealLoopControl::new("/dev", "/sys");
    let seen = listed(&loops, &device);
    assert_eq!(
        seen.backing_file, mine,
        "the kernel names the other's file by this daemon's path"
    );
    assert!(
        loops.find(&mine).unwrap().is_empty(),
        "another namespace's file at the same path is not this one"
    );
    assert_eq!(
        seen.backing_under(&state.join("images/volumes").canonicalize().unwrap()),
        None
    );
}
