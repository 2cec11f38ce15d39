//! The process: its effective user id, `fork` (single-threaded callers), and mounting
//! and unmounting FUSE through the setuid `fusermount3` helper.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The effective user id of this process.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no arguments, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}

/// Result of [`fork_process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// In the parent; the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// Forks the process. Must be called while the process has a single thread (the daemon
/// forks before it mounts anything or starts its FUSE workers).
pub fn fork_process() -> io::Result<Forked> {
    // SAFETY: the caller guarantees the process is single-threaded here, so the child
    // inherits no lock held by another thread and may run arbitrary code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Forked::Parent(child.as_raw())),
        Ok(nix::unistd::ForkResult::Child) => Ok(Forked::Child),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Mounts a FUSE filesystem at `mountpoint` through the setuid helper `fusermount3` (the
/// unprivileged path) and returns the `/dev/fuse` descriptor it hands back.
pub fn fusermount(mountpoint: &Path, options: &str) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::net::UnixStream;
    use std::os::unix::process::CommandExt;

    let (ours, theirs) = UnixStream::pair()?;
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-o")
        .arg(options)
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", theirs_fd.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl,
    // which is async-signal-safe; `theirs_fd` stays open in the parent until after
    // spawn, so the child inherits a valid descriptor.
    unsafe {
        cmd.pre_exec(move || {
            // SAFETY: `theirs_fd` is open in the child (inherited, see above).
            let fd = std::os::fd::BorrowedFd::borrow_raw(theirs_fd);
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )?;
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);

    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(std::os::fd::RawFd);
    let received = nix::sys::socket::recvmsg::<()>(
        ours.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::empty(),
    )
    .ok()
    .and_then(|msg| {
        msg.cmsgs().ok()?.find_map(|c| match c {
            nix::sys::socket::ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
    });
    let out = child.wait_with_output()?;
    match received {
        // SAFETY: the kernel just installed this descriptor in our table for us
        // (SCM_RIGHTS); nothing else owns it.
        Some(fd) if fd >= 0 => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        _ => Err(io::Error::other(format!(
            "fusermount3 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// Unmounts a FUSE mount made by [`fusermount`] (lazily when `lazy`).
pub fn fusermount_unmount(mountpoint: &Path, lazy: bool) -> io::Result<()> {
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg(if lazy { "-uz" } else { "-u" })
        .arg("--")
        .arg(mountpoint)
        .stdout(std::process::Stdio::null());
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "fusermount3 -u failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
