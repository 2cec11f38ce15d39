//! Mounting into another process's mount namespace (attaching a volume to a running
//! container). A multithreaded process cannot join a mount namespace, so the work is
//! done by a short-lived single-threaded helper: the daemon re-executes itself with
//! [`HELPER_ARG`], and [`helper_main`] clones the staged mount (open_tree), sets its
//! attributes (read-only, nosuid, nodev, and an id mapping when the target lives in
//! another user namespace), joins the target's mount namespace (setns), resolves the
//! target path beneath the target's root following no symlink, creates missing
//! directories, and attaches the clone there (move_mount). The host's own mount table
//! is not touched.

use std::fmt::Debug;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::sys;

/// First argument that makes the daemon binary act as the helper.
pub const HELPER_ARG: &str = "__ns-mount";

/// A request to the helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum NsRequest {
    /// Mount `source` (a mount point in our namespace) at `target` in `pid`'s.
    Attach {
        /// A process in the target namespace.
        pid: i32,
        /// The staged volume.
        source: PathBuf,
        /// Absolute path inside the target's root.
        target: PathBuf,
        /// Mount read-only.
        read_only: bool,
    },
    /// Unmount `target` in `pid`'s namespace.
    Detach {
        /// A process in the target namespace.
        pid: i32,
        /// Absolute path inside the target's root.
        target: PathBuf,
        /// The staged volume (in our namespace): only a mount of it is removed; another
        /// mount on top at `target` is refused with EBUSY.
        #[serde(default)]
        source: Option<PathBuf>,
    },
}

/// Mounts into and out of other processes' mount namespaces.
pub trait Namespaces: Send + Sync + Debug {
    /// Carries out `req`; returns whether an id-mapped mount was made (attach into a
    /// process in another user namespace).
    fn run(&self, req: &NsRequest) -> io::Result<bool>;
    /// The inode of `pid`'s mount namespace (what an attachment records, so that a
    /// reused pid is not taken for the container).
    fn mount_namespace(&self, pid: i32) -> io::Result<u64>;
    /// Whether an attachment into `pid` (whose mount namespace was `mnt_ns`, if known)
    /// can still be there: some process is still in that mount namespace (or, with
    /// no namespace recorded, `pid` still runs).
    fn attachment_alive(&self, pid: i32, mnt_ns: Option<u64>) -> io::Result<bool>;
    /// This boot's id (namespace inode numbers and pids mean nothing across boots).
    fn boot_id(&self) -> io::Result<String>;
}

/// Runs requests through the helper executable (normally the daemon itself).
#[derive(Debug, Clone)]
pub struct RealNamespaces {
    helper: PathBuf,
    proc: PathBuf,
}

impl RealNamespaces {
    /// `helper` is an executable whose `main` calls [`helper_main`] when its first
    /// argument is [`HELPER_ARG`].
    pub fn new(helper: impl Into<PathBuf>) -> Self {
        RealNamespaces {
            helper: helper.into(),
            proc: PathBuf::from("/proc"),
        }
    }

    /// The mount namespace inode of process `pid`: None when it is gone (or a zombie
    /// with no thread left); an error that does not say so (EACCES, ...) is returned,
    /// so that an attachment is never released on a guess. A process whose main
    /// thread exited is found through its remaining threads.
    fn ns_of(&self, pid: &str) -> io::Result<Option<u64>> {
        let gone =
            |e: &io::Error| matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH));
        match std::fs::metadata(self.proc.join(pid).join("ns/mnt")) {
            Ok(m) => return Ok(Some(m.ino())),
            Err(e) if !gone(&e) => return Err(e),
            Err(_) => {}
        }
        let tasks = match std::fs::read_dir(self.proc.join(pid).join("task")) {
            Ok(t) => t,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        for task in tasks {
            match std::fs::metadata(task?.path().join("ns/mnt")) {
                Ok(m) => return Ok(Some(m.ino())),
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

impl Namespaces for RealNamespaces {
    fn mount_namespace(&self, pid: i32) -> io::Result<u64> {
        self.ns_of(&pid.to_string())?
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))
    }

    fn boot_id(&self) -> io::Result<String> {
        Ok(
            std::fs::read_to_string(self.proc.join("sys/kernel/random/boot_id"))?
                .trim()
                .to_string(),
        )
    }

    fn attachment_alive(&self, pid: i32, mnt_ns: Option<u64>) -> io::Result<bool> {
        let own = self.ns_of(&pid.to_string())?;
        let Some(ns) = mnt_ns else {
            return Ok(own.is_some());
        };
        if own == Some(ns) {
            return Ok(true);
        }
        // Another process of the container may hold the namespace.
        for e in std::fs::read_dir(&self.proc)? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if name.bytes().all(|b| b.is_ascii_digit())
                && self.ns_of(&name).ok().flatten() == Some(ns)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn run(&self, req: &NsRequest) -> io::Result<bool> {
        let json = serde_json::to_string(req).map_err(io::Error::other)?;
        let out = Command::new(&self.helper)
            .arg(HELPER_ARG)
            .arg(json)
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            return Ok(stdout.trim() == "idmapped");
        }
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        // The helper prints "errno N: message"; keep the errno for the caller's mapping.
        let errno = msg
            .strip_prefix("errno ")
            .and_then(|r| r.split(':').next())
            .and_then(|n| n.parse::<i32>().ok());
        Err(match errno {
            // The helper's message is the errno's own text: keep the errno itself, so
            // the caller can map it (ELOOP: a symlink in the target path, ...).
            Some(n) if n > 0 => io::Error::from_raw_os_error(n),
            _ => io::Error::other(msg),
        })
    }
}

/// The helper's entry point: `args` is the JSON request. Prints `idmapped` or
/// `plain` on success; on failure prints `errno N: message` to stderr. Returns the
/// process exit code. Must run single-threaded.
pub fn helper_main(args: &[String]) -> i32 {
    let result = args
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "missing request"))
        .and_then(|j| serde_json::from_str::<NsRequest>(j).map_err(io::Error::other))
        .and_then(|req| match req {
            NsRequest::Attach {
                pid,
                source,
                target,
                read_only,
            } => attach(pid, &source, &target, read_only),
            NsRequest::Detach {
                pid,
                target,
                source,
            } => detach(pid, &target, source.as_deref()).map(|()| false),
        });
    match result {
        Ok(idmapped) => {
            println!("{}", if idmapped { "idmapped" } else { "plain" });
            0
        }
        Err(e) => {
            eprintln!("errno {}: {e}", e.raw_os_error().unwrap_or(0));
            1
        }
    }
}

fn open_path(path: &Path, directory: bool) -> io::Result<OwnedFd> {
    let mut flags = libc::O_PATH | libc::O_CLOEXEC;
    if directory {
        flags |= libc::O_DIRECTORY;
    }
    Ok(OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)?
        .into())
}

/// The target's path components below its root; refuses `..` and relative paths.
fn components(target: &Path) -> io::Result<Vec<PathBuf>> {
    if !target.is_absolute() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "target must be absolute",
        ));
    }
    let mut out = Vec::new();
    for c in target.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(PathBuf::from(n)),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "target must not contain ..",
                ));
            }
        }
    }
    if out.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "target is the root",
        ));
    }
    Ok(out)
}

fn proc_path(pid: i32, rest: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{rest}"))
}

fn join_mount_ns(pid: i32) -> io::Result<()> {
    let ns = OpenOptions::new()
        .read(true)
        .open(proc_path(pid, "ns/mnt"))?;
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNS)?;
    Ok(())
}

fn attach(pid: i32, source: &Path, target: &Path, read_only: bool) -> io::Result<bool> {
    let parts = components(target)?;
    if !proc_path(pid, "").exists() {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    let root = open_path(&proc_path(pid, "root"), true)?;
    let their_userns = std::fs::metadata(proc_path(pid, "ns/user"))?.ino();
    let our_userns = std::fs::metadata("/proc/self/ns/user")?.ino();
    let idmap = their_userns != our_userns;
    let userns = if idmap {
        Some(OwnedFd::from(std::fs::File::open(proc_path(
            pid, "ns/user",
        ))?))
    } else {
        None
    };
    // The staging path is resolved without links and cloned through its descriptor.
    let source = crate::os::mountpoint::canonical(source)
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let source = crate::os::mountpoint::MountPoint::open(&source)?;
    // Only a staged volume's mount is cloned, never the bare directory beneath it.
    if source.identity()?.mount_root != Some(true) {
        return Err(io::Error::from_raw_os_error(libc::ENODEV));
    }
    let tree = sys::open_tree_clone_fd(source.fd())?;
    let mut set = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    if read_only {
        set |= sys::MOUNT_ATTR_RDONLY;
    }
    sys::mount_setattr(tree.as_fd(), set, 0, None)?;
    if let Some(u) = &userns {
        sys::mount_setattr(tree.as_fd(), sys::MOUNT_ATTR_IDMAP, 0, Some(u.as_fd()))?;
    }
    join_mount_ns(pid)?;
    let mut dir = root;
    for part in &parts {
        dir = match sys::open_beneath(dir.as_fd(), part, true) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                nix::sys::stat::mkdirat(
                    dir.as_fd(),
                    part.as_path(),
                    nix::sys::stat::Mode::from_bits_truncate(0o755),
                )?;
                sys::open_beneath(dir.as_fd(), part, true)?
            }
            Err(e) => return Err(e),
        };
    }
    sys::move_mount_onto(tree.as_fd(), dir.as_fd())?;
    Ok(idmap)
}

fn detach(pid: i32, target: &Path, source: Option<&Path>) -> io::Result<()> {
    let parts = components(target)?;
    if !proc_path(pid, "").exists() {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // The volume's root as this namespace sees it; a mount of it there has the same.
    // Without the staging mount nothing can be compared: ENODEV, nothing touched.
    let expect = match source {
        Some(s) => {
            let staged =
                open_path(s, true).map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))?;
            let (mount_root, dev, ino) = sys::mount_root_identity(staged.as_fd())?;
            if !mount_root {
                return Err(io::Error::from_raw_os_error(libc::ENODEV));
            }
            Some((dev, ino))
        }
        None => None,
    };
    // A process that just exited (a zombie) has no root or namespace to open: gone.
    let gone = |e: io::Error| {
        if e.raw_os_error() == Some(libc::ENOENT) {
            io::Error::from_raw_os_error(libc::ESRCH)
        } else {
            e
        }
    };
    let root = open_path(&proc_path(pid, "root"), true).map_err(gone)?;
    join_mount_ns(pid).map_err(gone)?;
    let rel: PathBuf = parts.iter().collect();
    let fd = match sys::open_beneath(root.as_fd(), &rel, true) {
        Ok(fd) => fd,
        // Already gone: nothing is mounted there.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if let Some(expect) = expect {
        let (mount_root, dev, ino) = sys::mount_root_identity(fd.as_fd())?;
        if !mount_root {
            // Nothing mounted there: already detached.
            return Ok(());
        }
        if (dev, ino) != expect {
            // Another mount covers the volume's (or replaced it): not ours to remove.
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
    }
    let via = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ));
    match nix::mount::umount2(&via, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) => Ok(()),
        // Not a mount point (already detached).
        Err(nix::errno::Errno::EINVAL) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_must_be_absolute_without_dotdot() {
        assert!(components(Path::new("data")).is_err());
        assert!(components(Path::new("/data/../etc")).is_err());
        assert!(components(Path::new("/")).is_err());
        assert_eq!(
            components(Path::new("/mnt/./vol")).unwrap(),
            vec![PathBuf::from("mnt"), PathBuf::from("vol")]
        );
    }

    #[test]
    fn requests_round_trip_as_json() {
        let req = NsRequest::Attach {
            pid: 42,
            source: "/s".into(),
            target: "/t".into(),
            read_only: true,
        };
        let json = serde_json::to_string(&req).unwrap();
        assert!(json.contains("\"op\":\"attach\""));
        assert_eq!(serde_json::from_str::<NsRequest>(&json).unwrap(), req);
    }
}
