//! What a test sees of the host: mounts and loop devices under a directory, and
//! cleaning them up.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Unmounts every mount under `dir` (deepest first) and detaches every loop device
/// whose backing file is under `dir`, repeating while progress is made (a volume's
/// loop device keeps the pool mount busy until it is detached).
pub fn cleanup_under(dir: &Path) {
    for _ in 0..5 {
        let mut progress = false;
        let mut mounts = mounts_under(dir);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in mounts {
            if nix::mount::umount2(&m, nix::mount::MntFlags::empty()).is_ok() {
                progress = true;
            }
        }
        for dev in loops_under(dir) {
            if Command::new("losetup")
                .arg("-d")
                .arg(&dev)
                .status()
                .is_ok_and(|s| s.success())
            {
                progress = true;
            }
        }
        if mounts_under(dir).is_empty() && loops_under(dir).is_empty() {
            return;
        }
        if !progress {
            break;
        }
    }
    for m in mounts_under(dir) {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    for dev in loops_under(dir) {
        let _ = Command::new("losetup").arg("-d").arg(&dev).status();
    }
}

/// Mount points under `dir`, from /proc/self/mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// The mount options of the topmost mount at `path`.
pub fn mount_options(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .rev()
        .find(|l| l.split(' ').nth(4).is_some_and(|p| Path::new(p) == path))
        .and_then(|l| l.split(' ').nth(5).map(str::to_string))
}

/// Loop devices whose backing file is under `dir`.
pub fn loops_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(back) = std::fs::read_to_string(e.path().join("loop/backing_file"))
            && Path::new(back.trim_end()).starts_with(dir)
        {
            out.push(PathBuf::from("/dev").join(&name));
        }
    }
    out
}
