//! Open files: handles that keep the backing file open, and data I/O through them.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::attr::{Caller, FileKind};
use super::inode::Node;
use super::{OverlayFs, errno};

/// An open file.
#[derive(Debug)]
pub(crate) struct Handle {
    node: Arc<Node>,
    file: RwLock<Arc<File>>,
    /// The descriptor is on the upper layer's file.
    upper: AtomicBool,
}

impl Handle {
    fn file(&self) -> Arc<File> {
        self.file.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Handles {
    map: RwLock<HashMap<u64, Arc<Handle>>>,
    next: AtomicU64,
}

/// What `open`/`create` hand back: the handle number and the backing descriptor (an
/// adapter may give it to the kernel for passthrough).
#[derive(Debug, Clone)]
pub struct Opened {
    /// Handle number for later calls.
    pub fh: u64,
    /// The backing file, open for reading (and for writing when `writable`).
    pub file: Arc<File>,
    /// Whether the backing file is in the upper layer (else a read-only lower layer).
    pub upper: bool,
    /// Whether the backing descriptor is open for writing.
    pub writable: bool,
}

/// Flags of a caller's open that the backing open must not repeat: creation is done,
/// truncation is done by the overlay, append and direct I/O are applied by the kernel
/// to the overlay's file (and the backing descriptor may be shared between opens).
const STRIP: i32 = libc::O_ACCMODE
    | libc::O_CREAT
    | libc::O_EXCL
    | libc::O_NOCTTY
    | libc::O_TRUNC
    | libc::O_APPEND
    | libc::O_DIRECT
    | libc::O_NOFOLLOW
    | libc::O_PATH;

/// The kernel's `O_LARGEFILE`, which it sets on every open by a 64-bit process and
/// passes on in FUSE open requests (libc's constant is 0 for 64-bit glibc targets).
#[cfg(target_arch = "x86_64")]
const KERNEL_O_LARGEFILE: i32 = 0o100000;
#[cfg(target_arch = "aarch64")]
const KERNEL_O_LARGEFILE: i32 = 0o400000;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const KERNEL_O_LARGEFILE: i32 = 0;

/// Flags of a caller's open that a descriptor opened without them serves as well.
const REUSABLE: i32 = KERNEL_O_LARGEFILE | libc::O_CLOEXEC;

fn open_backing(path: &Path, write: bool, extra: i32) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(extra | libc::O_CLOEXEC)
        .open(path)
}

/// Opens a file of a read-only layer for reading without updating its access time
/// (layers are shared between overlays and must not change under them; kernel
/// overlayfs does the same). O_NOATIME needs ownership or CAP_FOWNER: without it, a
/// plain open.
pub(crate) fn open_lower(path: &Path, extra: i32) -> io::Result<File> {
    match open_backing(path, false, extra | libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open_backing(path, false, extra),
        other => other,
    }
}

impl OverlayFs {
    fn add_handle(&self, node: Arc<Node>, file: Arc<File>, upper: bool) -> u64 {
        let fh = self.handles.next.fetch_add(1, Ordering::Relaxed) + 1;
        let h = Arc::new(Handle {
            node,
            file: RwLock::new(file),
            upper: AtomicBool::new(upper),
        });
        self.handles
            .map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, h);
        fh
    }

    fn handle(&self, fh: u64) -> io::Result<Arc<Handle>> {
        self.handles
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or_else(|| errno(libc::EBADF))
    }

    /// Registers an already open upper file (after `create`).
    pub(crate) fn opened_upper(&self, node: Arc<Node>, file: File) -> Opened {
        let file = Arc::new(file);
        let fh = self.add_handle(node, file.clone(), true);
        Opened {
            fh,
            file,
            upper: true,
            writable: true,
        }
    }

    /// Opens `ino` with the caller's `flags`; a write or truncating open copies the file
    /// up first (without its data when truncating). Upper files are opened read-write
    /// whatever the caller asked, so one descriptor can serve every open of the inode.
    /// A truncating open by an unprivileged caller clears setuid/setgid, as the kernel
    /// would.
    pub fn open(&self, ino: u64, flags: i32, caller: Caller) -> io::Result<Opened> {
        let node = self.nodes.get(ino)?;
        if node.kind == FileKind::Dir {
            return Err(errno(libc::EISDIR));
        }
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let trunc = flags & libc::O_TRUNC != 0;
        if write || trunc {
            self.check_writable()?;
        }
        let copy = if (write || trunc) && !node.snapshot().upper {
            let _t = self.write_tree();
            self.copy_up_file(&node, !trunc)?
        } else {
            None
        };
        let _t = self.read_tree();
        let st = node.snapshot();
        let extra = flags & !STRIP;
        let (file, writable) = if let Some(copy) = copy.filter(|_| extra & !REUSABLE == 0) {
            // The copy-up's own descriptor: the same file, open read-write.
            (copy, true)
        } else if st.upper && !self.read_only {
            let path = self.backing_path(&node, &st)?;
            match open_backing(&path, true, extra) {
                Ok(f) => (f, true),
                Err(e) if !write => {
                    tracing::debug!(ino, error = %e, "read-write backing open refused");
                    (open_backing(&path, false, extra)?, false)
                }
                Err(e) => return Err(e),
            }
        } else {
            // A lower file, or any file of a read-only overlay.
            (open_lower(&self.backing_path(&node, &st)?, extra)?, false)
        };
        if trunc && st.upper {
            file.set_len(0)?;
            if !self.is_root(caller.uid) {
                kill_suid(&file)?;
            }
        }
        let file = Arc::new(file);
        let fh = self.add_handle(node, file.clone(), st.upper);
        Ok(Opened {
            fh,
            file,
            upper: st.upper,
            writable,
        })
    }

    /// The backing file of a handle; a read handle opened on a lower file that has since
    /// been copied up is moved to the upper copy, so it sees later writes.
    fn handle_file(&self, h: &Handle) -> io::Result<Arc<File>> {
        if !h.upper.load(Ordering::Acquire) {
            let st = h.node.snapshot();
            if st.upper {
                let _t = self.read_tree();
                let path = self.backing_path(&h.node, &st)?;
                let f = Arc::new(open_backing(&path, false, 0)?);
                *h.file.write().unwrap_or_else(|p| p.into_inner()) = f.clone();
                h.upper.store(true, Ordering::Release);
                return Ok(f);
            }
        }
        Ok(h.file())
    }

    /// Reads up to `size` bytes at `offset` (fewer only at end of file).
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let h = self.handle(fh)?;
        let f = self.handle_file(&h)?;
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match f.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    /// Writes `data` at `offset`; with `kill_suidgid` (a write by an unprivileged
    /// caller) setuid/setgid bits are cleared first, as the kernel would.
    pub fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
    ) -> io::Result<usize> {
        self.check_writable()?;
        let h = self.handle(fh)?;
        let f = self.handle_file(&h)?;
        if kill_suidgid {
            kill_suid(&f)?;
        }
        f.write_all_at(data, offset)?;
        Ok(data.len())
    }

    /// Flushes data (and metadata unless `datasync`) of an open file to disk.
    pub fn fsync(&self, fh: u64, datasync: bool) -> io::Result<()> {
        let f = self.handle(fh)?.file();
        if datasync {
            f.sync_data()
        } else {
            f.sync_all()
        }
    }

    /// Allocates or punches space in an open file (`fallocate(2)` modes).
    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> io::Result<()> {
        self.check_writable()?;
        let h = self.handle(fh)?;
        let f = self.handle_file(&h)?;
        nix::fcntl::fallocate(
            &*f,
            nix::fcntl::FallocateFlags::from_bits_truncate(mode),
            offset as i64,
            length as i64,
        )?;
        Ok(())
    }

    /// `lseek` on an open file (the kernel asks only for `SEEK_DATA`/`SEEK_HOLE`).
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> io::Result<i64> {
        let h = self.handle(fh)?;
        let f = self.handle_file(&h)?;
        let whence = match whence {
            libc::SEEK_SET => nix::unistd::Whence::SeekSet,
            libc::SEEK_CUR => nix::unistd::Whence::SeekCur,
            libc::SEEK_END => nix::unistd::Whence::SeekEnd,
            libc::SEEK_DATA => nix::unistd::Whence::SeekData,
            libc::SEEK_HOLE => nix::unistd::Whence::SeekHole,
            _ => return Err(errno(libc::EINVAL)),
        };
        Ok(nix::unistd::lseek(&*f, offset, whence)?)
    }

    /// Closes a handle.
    pub fn release(&self, fh: u64) {
        self.handles
            .map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }

    /// The backing file of an open handle if it is the upper file (for `setattr`
    /// through a descriptor; never takes the namespace lock, which the caller holds).
    pub(crate) fn handle_upper_file(&self, fh: u64) -> Option<Arc<File>> {
        let h = self.handle(fh).ok()?;
        h.upper.load(Ordering::Acquire).then(|| h.file())
    }
}

/// Clears setuid, and setgid where group-execute is set, like the kernel on a write by
/// an unprivileged caller.
pub(crate) fn kill_suid(f: &File) -> io::Result<()> {
    let mode = f.metadata()?.permissions().mode();
    let mut new = mode & !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 {
        new &= !libc::S_ISGID;
    }
    if new != mode {
        f.set_permissions(std::fs::Permissions::from_mode(new & 0o7777))?;
    }
    Ok(())
}
