//! btrfs operations: subvolumes, qgroup limits and usage, the nodatacow flag, send and
//! receive streams.

use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::error::{Error, Result};
use crate::os::command::run;
use crate::os::sendstream::{Expect, StreamCheck};
use crate::sys;

/// Bytes a qgroup references and its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QgroupUsage {
    /// Bytes referenced by the subvolume.
    pub referenced: u64,
    /// The limit on referenced bytes (None: unlimited).
    pub max_referenced: Option<u64>,
}

/// A running `btrfs send`: read the stream to its end, then [`SendStream::finish`]
/// says whether the sender succeeded. Dropped unfinished, the sender is killed.
pub trait SendStream: io::Read + Send {
    /// Waits for the sender; an error when it failed.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// A running `btrfs receive`: write the stream into it, then
/// [`ReceiveSink::finish`] closes it and says whether the receiver applied it.
/// Dropped unfinished, the receiver is killed (what it made is the caller's to remove).
pub trait ReceiveSink: io::Write + Send {
    /// Closes the input and waits for the receiver; an error when it failed.
    fn finish(self: Box<Self>) -> Result<()>;
}

impl std::fmt::Debug for dyn ReceiveSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReceiveSink")
    }
}

impl std::fmt::Debug for dyn SendStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SendStream")
    }
}

/// btrfs-specific operations on a pool.
pub trait Btrfs: Send + Sync + Debug {
    /// True when `path` is on a btrfs filesystem.
    fn is_btrfs(&self, path: &Path) -> io::Result<bool>;
    /// The filesystem UUID of the btrfs mounted at `mount`.
    fn fs_uuid(&self, mount: &Path) -> Result<String>;
    /// Turns quotas (qgroups) on for the filesystem at `mount`; a no-op when on.
    fn enable_quota(&self, mount: &Path) -> Result<()>;
    /// Creates a subvolume at `path` and returns its id.
    fn create_subvolume(&self, path: &Path) -> Result<u64>;
    /// Snapshots subvolume `source` as a new subvolume `dest` (read-only when
    /// `read_only`) and returns the new subvolume's id.
    fn snapshot(&self, source: &Path, dest: &Path, read_only: bool) -> Result<u64>;
    /// Sets the compression of everything under `path` (existing directories and
    /// files, so new data written anywhere in the tree uses it): `zstd`, `lzo`, `zlib`
    /// or `none`. Directories stop being nodatacow; nodatacow files stay uncompressed.
    fn set_compression(&self, path: &Path, algorithm: &str) -> Result<()>;
    /// Deletes the subvolume at `path` and its qgroup.
    fn delete_subvolume(&self, path: &Path) -> Result<()>;
    /// Limits the bytes the subvolume at `path` may reference.
    fn set_limit(&self, path: &Path, bytes: u64) -> Result<()>;
    /// Usage of subvolume `subvolume_id` on the filesystem with `fs_uuid`, if known.
    fn qgroup_usage(&self, fs_uuid: &str, subvolume_id: u64) -> Result<Option<QgroupUsage>>;
    /// The id of the subvolume whose root is `path`.
    fn subvolume_id(&self, path: &Path) -> Result<u64>;
    /// Whether `path` is the root of a subvolume (not a directory inside one).
    fn is_subvolume(&self, path: &Path) -> io::Result<bool>;
    /// Waits until the subvolumes deleted on the filesystem of `path` are cleaned
    /// (their space given back), at most `timeout`; false if it had to stop waiting.
    fn wait_for_cleaner(&self, path: &Path, timeout: std::time::Duration) -> Result<bool>;
    /// Marks an empty file nodatacow, so in-place writes to an image do not fragment it;
    /// on a directory, files made in it from then on are nodatacow.
    fn set_nocow(&self, file: &File) -> io::Result<()>;
    /// Whether `file` (a file or a directory) is nodatacow.
    fn is_nocow(&self, file: &File) -> io::Result<bool>;
    /// Makes a directory stop handing nodatacow to the files made in it.
    fn clear_nocow(&self, dir: &File) -> io::Result<()>;
    /// Starts a send stream of read-only subvolume `snapshot`, relative to read-only
    /// subvolume `parent` (incremental) when given.
    fn send(&self, snapshot: &Path, parent: Option<&Path>) -> Result<Box<dyn SendStream>>;
    /// Starts receiving a send stream into directory `dir`, where the stream's
    /// subvolume appears under the name it had on the sender. The stream must match
    /// `expect` (checked before any of it is applied) and cannot reach outside `dir`.
    fn receive(&self, dir: &Path, expect: Expect) -> Result<Box<dyn ReceiveSink>>;
    /// The UUIDs the subvolume at `path` is known by to send streams: its own and, if
    /// it was received, the one it was received as.
    fn subvolume_uuids(&self, path: &Path) -> Result<Vec<[u8; 16]>>;
}

/// A child process whose stdout is a send stream.
#[derive(Debug)]
struct ChildSend {
    child: Option<Child>,
    stdout: ChildStdout,
}

impl io::Read for ChildSend {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stdout.read(buf)
    }
}

impl SendStream for ChildSend {
    fn finish(mut self: Box<Self>) -> Result<()> {
        match self.child.take() {
            Some(child) => wait_child("btrfs send", child),
            None => Ok(()),
        }
    }
}

impl Drop for ChildSend {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A child process whose stdin takes a send stream, each command checked first.
#[derive(Debug)]
struct ChildReceive {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    check: StreamCheck,
}

impl io::Write for ChildReceive {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let passed = self.check.push(buf)?;
        match &mut self.stdin {
            Some(w) => {
                w.write_all(&passed)?;
                Ok(buf.len())
            }
            None => Err(io::Error::from(io::ErrorKind::BrokenPipe)),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.stdin {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl ReceiveSink for ChildReceive {
    fn finish(mut self: Box<Self>) -> Result<()> {
        if let Err(refused) = self.check.finish() {
            // Dropped: the receiver is killed before it sees the end of the stream.
            return Err(Error::StreamMismatch(refused.to_string()));
        }
        drop(self.stdin.take());
        match self.child.take() {
            Some(child) => wait_child("btrfs receive", child),
            None => Ok(()),
        }
    }
}

impl Drop for ChildReceive {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `UUID:` and `Received UUID:` of `btrfs subvolume show` output.
fn parse_subvolume_uuids(text: &str) -> Vec<[u8; 16]> {
    text.lines()
        .filter_map(|l| {
            let (key, value) = l.trim().split_once(':')?;
            matches!(key.trim(), "UUID" | "Received UUID")
                .then(|| uuid::Uuid::parse_str(value.trim()).ok())
                .flatten()
        })
        .map(|u| *u.as_bytes())
        .filter(|u| *u != [0; 16])
        .collect()
}

fn wait_child(program: &str, child: Child) -> Result<()> {
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("wait for {program}"), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            program: program.to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// btrfs through the btrfs tool, statfs, sysfs and inode-flag ioctls.
#[derive(Debug, Clone)]
pub struct RealBtrfs {
    sys: PathBuf,
}

impl RealBtrfs {
    /// `sys` is normally /sys.
    pub fn new(sys: impl Into<PathBuf>) -> Self {
        RealBtrfs { sys: sys.into() }
    }
}

/// Sets `btrfs.compression` of one open file or directory. btrfs cannot compress
/// nodatacow data (EINVAL): a nodatacow directory stops handing the flag to new files
/// before it is given a compression; a nodatacow file keeps its data as it is (its
/// flag cannot change once it holds data), as does anything nodatacow for `none`.
fn set_file_compression(
    file: std::os::fd::BorrowedFd<'_>,
    is_dir: bool,
    algorithm: &str,
) -> io::Result<()> {
    let flags = sys::get_inode_flags(file)?;
    if flags & sys::FS_NOCOW_FL != 0 {
        if !is_dir || algorithm == "none" {
            return Ok(());
        }
        sys::set_inode_flags(file, flags & !sys::FS_NOCOW_FL)?;
    }
    sys::fsetxattr(file, "btrfs.compression", algorithm.as_bytes())
}

fn rootid(path: &Path) -> Result<u64> {
    let id = run(
        "btrfs",
        [
            "inspect-internal".as_ref(),
            "rootid".as_ref(),
            path.as_os_str(),
        ],
    )?;
    id.trim().parse().map_err(|_| Error::Command {
        program: "btrfs inspect-internal rootid".into(),
        status: "ok".into(),
        stderr: format!("unexpected output {id:?}"),
    })
}

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;

impl Btrfs for RealBtrfs {
    fn is_btrfs(&self, path: &Path) -> io::Result<bool> {
        let st = nix::sys::statfs::statfs(path)?;
        Ok(st.filesystem_type().0 as i64 == BTRFS_SUPER_MAGIC)
    }

    fn fs_uuid(&self, mount: &Path) -> Result<String> {
        let out = run(
            "btrfs",
            ["filesystem".as_ref(), "show".as_ref(), mount.as_os_str()],
        )?;
        out.split_whitespace()
            .skip_while(|w| *w != "uuid:")
            .nth(1)
            .map(str::to_string)
            .ok_or_else(|| Error::Command {
                program: "btrfs filesystem show".into(),
                status: "ok".into(),
                stderr: format!("no uuid in output: {out}"),
            })
    }

    fn subvolume_id(&self, path: &Path) -> Result<u64> {
        rootid(path)
    }

    fn is_subvolume(&self, path: &Path) -> io::Result<bool> {
        // A subvolume's root directory is always inode 256 (BTRFS_FIRST_FREE_OBJECTID).
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path)?;
        Ok(m.is_dir() && m.ino() == 256 && self.is_btrfs(path)?)
    }

    fn enable_quota(&self, mount: &Path) -> Result<()> {
        run(
            "btrfs",
            ["quota".as_ref(), "enable".as_ref(), mount.as_os_str()],
        )?;
        Ok(())
    }

    fn create_subvolume(&self, path: &Path) -> Result<u64> {
        run(
            "btrfs",
            ["subvolume".as_ref(), "create".as_ref(), path.as_os_str()],
        )?;
        rootid(path)
    }

    fn snapshot(&self, source: &Path, dest: &Path, read_only: bool) -> Result<u64> {
        let mut args: Vec<&std::ffi::OsStr> = vec!["subvolume".as_ref(), "snapshot".as_ref()];
        if read_only {
            args.push("-r".as_ref());
        }
        args.push(source.as_os_str());
        args.push(dest.as_os_str());
        run("btrfs", args)?;
        rootid(dest)
    }

    fn set_compression(&self, path: &Path, algorithm: &str) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        // Walked by descriptors, never by path: a container writing to the volume may
        // swap any entry for a symlink or a device node while the walk goes on. Each
        // entry is opened O_PATH without following a link, and only a directory or a
        // regular file is reopened (through its descriptor, so the same inode) to be
        // changed.
        let io_err = |what: &str, p: &Path, e: nix::errno::Errno| {
            Error::io(format!("{what} {}", p.display()), e.into())
        };
        let mut stack: Vec<(Option<std::rc::Rc<OwnedFd>>, std::ffi::CString, PathBuf)> = vec![(
            None,
            std::ffi::CString::new(path.as_os_str().as_bytes())
                .map_err(|_| Error::InvalidArgument(format!("{} holds a NUL", path.display())))?,
            path.to_path_buf(),
        )];
        while let Some((parent, name, shown)) = stack.pop() {
            let how = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let at = match &parent {
                None => nix::fcntl::open(name.as_c_str(), how | OFlag::O_DIRECTORY, Mode::empty()),
                Some(dir) => nix::fcntl::openat(dir.as_fd(), name.as_c_str(), how, Mode::empty()),
            };
            let at = match at {
                Ok(fd) => fd,
                // Removed since it was listed: nothing to compress.
                Err(nix::errno::Errno::ENOENT) if parent.is_some() => continue,
                Err(e) => return Err(io_err("open", &shown, e)),
            };
            let mode = nix::sys::stat::fstat(&at)
                .map_err(|e| io_err("stat", &shown, e))?
                .st_mode;
            let kind = SFlag::from_bits_truncate(mode) & SFlag::S_IFMT;
            let is_dir = kind == SFlag::S_IFDIR;
            if !is_dir && kind != SFlag::S_IFREG {
                continue; // symlinks, devices, sockets: no data to compress
            }
            let flags = if is_dir {
                OFlag::O_RDONLY | OFlag::O_DIRECTORY
            } else {
                OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY
            };
            let file = nix::fcntl::open(
                format!("/proc/self/fd/{}", at.as_raw_fd()).as_str(),
                flags | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err("open", &shown, e))?;
            drop(at);
            set_file_compression(file.as_fd(), is_dir, algorithm)
                .map_err(|e| Error::io(format!("set compression on {}", shown.display()), e))?;
            if !is_dir {
                continue;
            }
            let file = std::rc::Rc::new(file);
            let mut listing = nix::dir::Dir::from_fd(
                nix::unistd::dup(file.as_fd()).map_err(|e| io_err("read", &shown, e))?,
            )
            .map_err(|e| io_err("read", &shown, e))?;
            for entry in listing.iter() {
                let entry = entry.map_err(|e| io_err("read", &shown, e))?;
                let child = entry.file_name();
                if matches!(child.to_bytes(), b"." | b"..") {
                    continue;
                }
                let child_shown = shown.join(std::ffi::OsStr::from_bytes(child.to_bytes()));
                stack.push((
                    Some(std::rc::Rc::clone(&file)),
                    child.to_owned(),
                    child_shown,
                ));
            }
        }
        Ok(())
    }

    fn delete_subvolume(&self, path: &Path) -> Result<()> {
        let id = run(
            "btrfs",
            [
                "inspect-internal".as_ref(),
                "rootid".as_ref(),
                path.as_os_str(),
            ],
        )
        .ok();
        run(
            "btrfs",
            ["subvolume".as_ref(), "delete".as_ref(), path.as_os_str()],
        )?;
        if let (Some(id), Some(parent)) = (id, path.parent()) {
            // The qgroup outlives its subvolume until destroyed; while the cleaner still
            // holds the subvolume's extents this may fail, which only leaves a stale
            // qgroup that `btrfs qgroup clear-stale` removes later.
            let qgroup = format!("0/{}", id.trim());
            if let Err(e) = run(
                "btrfs",
                [
                    "qgroup".as_ref(),
                    "destroy".as_ref(),
                    qgroup.as_ref(),
                    parent.as_os_str(),
                ],
            ) {
                tracing::debug!(%qgroup, error = %e, "qgroup not destroyed yet");
            }
        }
        Ok(())
    }

    fn set_limit(&self, path: &Path, bytes: u64) -> Result<()> {
        let limit = bytes.to_string();
        run(
            "btrfs",
            [
                "qgroup".as_ref(),
                "limit".as_ref(),
                limit.as_ref(),
                path.as_os_str(),
            ],
        )?;
        Ok(())
    }

    fn qgroup_usage(&self, fs_uuid: &str, subvolume_id: u64) -> Result<Option<QgroupUsage>> {
        let dir = self
            .sys
            .join(format!("fs/btrfs/{fs_uuid}/qgroups/0_{subvolume_id}"));
        let read = |name: &str| -> Result<Option<String>> {
            match std::fs::read_to_string(dir.join(name)) {
                Ok(s) => Ok(Some(s.trim().to_string())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(format!("read {}", dir.join(name).display()), e)),
            }
        };
        let Some(referenced) = read("referenced")? else {
            return Ok(None);
        };
        let max = read("max_referenced")?;
        Ok(Some(QgroupUsage {
            referenced: referenced.parse().unwrap_or(0),
            max_referenced: max
                .and_then(|m| m.parse().ok())
                .filter(|&m: &u64| m != u64::MAX),
        }))
    }

    fn set_nocow(&self, file: &File) -> io::Result<()> {
        let flags = sys::get_inode_flags(file.as_fd())?;
        sys::set_inode_flags(file.as_fd(), flags | sys::FS_NOCOW_FL)
    }

    fn is_nocow(&self, file: &File) -> io::Result<bool> {
        Ok(sys::get_inode_flags(file.as_fd())? & sys::FS_NOCOW_FL != 0)
    }

    fn clear_nocow(&self, dir: &File) -> io::Result<()> {
        let flags = sys::get_inode_flags(dir.as_fd())?;
        if flags & sys::FS_NOCOW_FL != 0 {
            sys::set_inode_flags(dir.as_fd(), flags & !sys::FS_NOCOW_FL)?;
        }
        Ok(())
    }

    fn send(&self, snapshot: &Path, parent: Option<&Path>) -> Result<Box<dyn SendStream>> {
        let mut cmd = Command::new("btrfs");
        // Version 1: the version a receiver checks (see os::sendstream).
        cmd.arg("send").arg("-q").arg("--proto").arg("1");
        if let Some(p) = parent {
            cmd.arg("-p").arg(p);
        }
        let mut child = cmd
            .arg(snapshot)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io("run btrfs send", e))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::io("btrfs send stdout", io::ErrorKind::BrokenPipe.into()))?;
        Ok(Box::new(ChildSend {
            child: Some(child),
            stdout,
        }))
    }

    fn wait_for_cleaner(&self, path: &Path, timeout: std::time::Duration) -> Result<bool> {
        // A commit wakes the cleaner now rather than at the next periodic commit.
        run(
            "btrfs",
            ["filesystem".as_ref(), "sync".as_ref(), path.as_os_str()],
        )?;
        let mut child = Command::new("btrfs")
            .args(["subvolume", "sync"])
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io("run btrfs subvolume sync", e))?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if child
                .try_wait()
                .map_err(|e| Error::io("wait for btrfs subvolume sync", e))?
                .is_some()
            {
                wait_child("btrfs subvolume sync", child)?;
                // The cleaned extents count as free once the transaction commits.
                run(
                    "btrfs",
                    ["filesystem".as_ref(), "sync".as_ref(), path.as_os_str()],
                )?;
                return Ok(true);
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(false);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn subvolume_uuids(&self, path: &Path) -> Result<Vec<[u8; 16]>> {
        let out = run(
            "btrfs",
            ["subvolume".as_ref(), "show".as_ref(), path.as_os_str()],
        )?;
        Ok(parse_subvolume_uuids(&out))
    }

    fn receive(&self, dir: &Path, expect: Expect) -> Result<Box<dyn ReceiveSink>> {
        let mut child = Command::new("btrfs")
            .arg("receive")
            .arg("-q")
            // Confined to `dir`: whatever the stream names, even through a link it
            // made, resolves inside it.
            .arg("-C")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io("run btrfs receive", e))?;
        let stdin = child.stdin.take();
        Ok(Box::new(ChildReceive {
            child: Some(child),
            stdin,
            check: StreamCheck::new(expect),
        }))
    }
}
