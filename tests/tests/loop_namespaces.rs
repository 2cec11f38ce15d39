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

/// Binds `image` (a path below `view`, which the child mounts `real` on) to a loop
/// device from a private mount namespace, and returns the device.
fn bind_from_another_namespace(real: &Path, view: &Path, image: &Path) -> String {
    let script = format!(
        "mount --bind '{}' '{}' && losetup -f --show '{}'",
        real.display(),
        view.display(),
        image.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env("PATH", path_env())
        .output()
        .expect("unshare");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
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
    // What this namespace reads for it: the child's path below its bind mount.
    let seen = loops
        .list()
        .unwrap()
        .into_iter()
        .find(|l| l.device == Path::new(&device))
        .expect("the device is listed");
    assert_eq!(seen.backing_file, Path::new("/images/volumes/v-1/disk.img"));

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
