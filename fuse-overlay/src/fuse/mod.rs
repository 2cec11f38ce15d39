//! The thin FUSE adapter: `impl fuser::Filesystem` over [`OverlayFs`].
//!
//! It translates requests and replies and owns the one FUSE-specific policy: **passthrough**.
//! When privileged and the kernel offers `FUSE_PASSTHROUGH`, an open file is handed to
//! the kernel as a backing file, so reads, writes and mmap of its data never reach this
//! process. The kernel insists that all concurrent opens of one inode use the same
//! backing file; an open that cannot share the inode's current backing file (a write
//! open while a read-only lower file backs it, or after a copy-up) is served through
//! this process with `FOPEN_DIRECT_IO`, which the kernel allows next to passthrough.
//!
//! Without passthrough, files are served through the page cache (mmap works as usual).
//! `FUSE_HANDLE_KILLPRIV_V2` is asked for, so the kernel leaves clearing setuid bits on
//! write to us (the write request carries `FUSE_WRITE_KILL_SUIDGID`).
//! `security.capability` is answered truthfully: answering ENOSYS would make the kernel
//! stop forwarding *every* getxattr and so hide file capabilities of image binaries.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::overlay::{Attr, Caller, Entry, FileKind, Opened, OverlayFs, SetAttr, SetTime};

fn errno(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn fuse_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev as u32,
        blksize: a.blksize,
        flags: 0,
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(t),
    })
}

/// The backing file registered for one inode, shared by its passthrough opens.
#[derive(Debug)]
struct Backing {
    id: Arc<BackingId>,
    upper: bool,
    writable: bool,
    opens: usize,
}

/// Options of the FUSE adapter.
#[derive(Debug, Clone, Copy)]
pub struct FuseOptions {
    /// Use FUSE passthrough when the kernel and our privileges allow it.
    pub passthrough: bool,
}

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions { passthrough: true }
    }
}

/// `impl fuser::Filesystem` for an overlay.
#[derive(Debug)]
pub struct OverlayFuse {
    core: Arc<OverlayFs>,
    want_passthrough: bool,
    passthrough: AtomicBool,
    backing: Mutex<HashMap<u64, Backing>>,
    /// Handles answered with passthrough → their inode.
    passthrough_fhs: Mutex<HashMap<u64, u64>>,
}

impl OverlayFuse {
    /// An adapter serving `core`.
    pub fn new(core: Arc<OverlayFs>, options: FuseOptions) -> Self {
        OverlayFuse {
            want_passthrough: options.passthrough && core.privileged(),
            core,
            passthrough: AtomicBool::new(false),
            backing: Mutex::new(HashMap::new()),
            passthrough_fhs: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the kernel accepted passthrough at `init`.
    pub fn passthrough_active(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    fn reply_entry(&self, reply: ReplyEntry, r: io::Result<Entry>) {
        match r {
            Ok(e) => reply.entry_with_ttls(
                &e.attr_ttl,
                &e.entry_ttl,
                &fuse_attr(&e.attr),
                Generation(0),
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Whether an open of `ino` (for writing or not) cannot share the backing file the
    /// inode is already pinned to (see [`OverlayFs::split_inode`]).
    fn conflicts(&self, ino: u64, write: bool) -> io::Result<bool> {
        if !self.passthrough.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let map = self.backing.lock().unwrap_or_else(|p| p.into_inner());
        let Some(b) = map.get(&ino) else {
            return Ok(false);
        };
        let upper = write || self.core.is_upper(ino)?;
        Ok(b.upper != upper || (write && !b.writable))
    }

    /// The backing id to answer an open with: the inode's current one, or a new one
    /// registered through `register`; `None` serves the open through this process.
    fn passthrough_for(
        &self,
        ino: u64,
        opened: &Opened,
        register: impl FnOnce(&std::fs::File) -> io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        if !self.passthrough.load(Ordering::Relaxed) {
            return None;
        }
        let mut map = self.backing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.get_mut(&ino) {
            b.opens += 1;
            return Some(b.id.clone());
        }
        match register(&opened.file) {
            Ok(id) => {
                let id = Arc::new(id);
                map.insert(
                    ino,
                    Backing {
                        id: id.clone(),
                        upper: opened.upper,
                        writable: opened.writable,
                        opens: 1,
                    },
                );
                Some(id)
            }
            Err(e) => {
                tracing::debug!(ino, error = %e, "passthrough refused, serving through the daemon");
                None
            }
        }
    }

    fn note_passthrough(&self, fh: u64, ino: u64) {
        self.passthrough_fhs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, ino);
    }

    fn release_passthrough(&self, fh: u64) {
        let ino = self
            .passthrough_fhs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
        if let Some(ino) = ino {
            let mut map = self.backing.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = map.get_mut(&ino) {
                b.opens -= 1;
                if b.opens == 0 {
                    map.remove(&ino);
                }
            }
        }
    }

    fn open_flags(opened: &Opened) -> FopenFlags {
        let mut f = FopenFlags::FOPEN_NOFLUSH;
        if !opened.upper {
            // Lower files never change under us.
            f |= FopenFlags::FOPEN_KEEP_CACHE;
        }
        f
    }
}

mod filesystem;
