//! Copy-up: bringing an entry from a lower layer into the upper layer before it changes.
//!
//! The copy is built under a fresh name in the work directory — data (reflink; else a
//! small file not in the page cache by one direct read, so it is cached once, as its
//! copy; else `copy_file_range` over the data extents, holes kept), then owner, xattrs (not the
//! overlay's own), mode, and last the times — and renamed into place, so the upper layer
//! never shows a half-copied file. Parent directories are copied first, with their own
//! metadata. A copied regular file is fsynced before the rename, as kernel overlayfs
//! does: otherwise a crash could leave the new name on disk without the data (an empty
//! or partial file shadowing the intact lower one). A `volatile` overlay skips that.

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use super::attr::FileKind;
use super::inode::{Node, UPPER_LAYER};
use super::{OverlayFs, errno, sys, whiteout};

/// Copies `len` bytes at `start` from `src` to the same offset of `dst`; returns the
/// offset reached (below `start + len` when `src` ends first).
fn copy_range(src: &File, dst: &File, start: u64, len: u64) -> io::Result<u64> {
    let mut off_in = start as i64;
    let mut off_out = start as i64;
    let end = start + len;
    while (off_in as u64) < end {
        let want = (end - off_in as u64).min(1 << 30) as usize;
        match nix::fcntl::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
            Ok(0) => return Ok(off_in as u64),
            Ok(_) => {}
            Err(
                nix::errno::Errno::EXDEV
                | nix::errno::Errno::EINVAL
                | nix::errno::Errno::ENOSYS
                | nix::errno::Errno::EOPNOTSUPP,
            ) => return copy_by_read(src, dst, off_in as u64, end),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(off_in as u64)
}

fn copy_by_read(src: &File, dst: &File, mut off: u64, end: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    while off < end {
        let want = ((end - off) as usize).min(buf.len());
        let n = src.read_at(&mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        dst.write_all_at(&buf[..n], off)?;
        off += n as u64;
    }
    Ok(off)
}

/// Files up to this size are copied in one `copy_file_range` without looking for holes
/// (two `lseek`s and an `ftruncate` saved per small file).
const SMALL_FILE: u64 = 1 << 20;

/// Copies a regular file's data: a reflink when the filesystem can (`reflink` says
/// whether to try; the first refusal clears it, as the upper filesystem will not change
/// its mind), else only the data extents (holes stay holes) of files above
/// [`SMALL_FILE`], everything of smaller ones.
pub(crate) fn copy_data(src: &File, dst: &File, size: u64, reflink: &AtomicBool) -> io::Result<()> {
    if size == 0 {
        return Ok(());
    }
    if reflink.load(Ordering::Relaxed) {
        match sys::ficlone(dst, src) {
            Ok(()) => return Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY)
                ) =>
            {
                reflink.store(false, Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }
    if size <= SMALL_FILE {
        // A source shortened meanwhile leaves a shorter copy: it gets the recorded
        // size, as after a sparse copy.
        let direct = if uncached(src, size) {
            copy_direct(src, dst, size)?
        } else {
            0
        };
        let copied = if direct < size {
            copy_range(src, dst, direct, size - direct)?
        } else {
            direct
        };
        if copied < size {
            dst.set_len(size)?;
        }
        return Ok(());
    }
    let mut off: u64 = 0;
    while off < size {
        let data = match nix::unistd::lseek(src, off as i64, nix::unistd::Whence::SeekData) {
            Ok(d) => d as u64,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(_) => {
                // No SEEK_DATA here: copy everything.
                copy_range(src, dst, off, size - off)?;
                break;
            }
        };
        let hole = match nix::unistd::lseek(src, data as i64, nix::unistd::Whence::SeekHole) {
            Ok(h) => (h as u64).min(size),
            Err(_) => size,
        };
        if hole > data {
            copy_range(src, dst, data, hole - data)?;
        }
        off = hole.max(data + 1);
    }
    dst.set_len(size)
}

/// Whether none of the first `size` bytes of `src` are in the page cache (false when
/// the kernel cannot tell).
fn uncached(src: &File, size: u64) -> bool {
    sys::page_cache(src, size).is_ok_and(|p| p.cached == 0)
}

/// Alignment of direct reads: a page, a multiple of every logical block size.
const DIRECT_ALIGN: usize = 4096;

/// Copies a small file whose data is not in the page cache with one direct read
/// (`O_DIRECT`): the data goes from the device to the copy without a stop in the lower
/// file's page cache, so a copied-up file is cached once (as its upper copy), not twice,
/// and the read skips page-cache bookkeeping. Returns how many bytes from the start
/// were copied: all of them, or fewer when the lower filesystem refuses direct reads
/// or ends one early (the caller copies the rest through the cache).
fn copy_direct(src: &File, dst: &File, size: u64) -> io::Result<u64> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(src, FcntlArg::F_GETFL)?);
    if fcntl(src, FcntlArg::F_SETFL(flags | OFlag::O_DIRECT)).is_err() {
        return Ok(0);
    }
    let len = (size as usize).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    DIRECT_BUF.with_borrow_mut(|raw| {
        if raw.len() < len + DIRECT_ALIGN {
            raw.resize(len + DIRECT_ALIGN, 0);
        }
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN);
        read_direct(src, dst, size, &mut raw[start..start + len], flags)
    })
}

thread_local! {
    /// Each worker's buffer for [`copy_direct`], kept between copy-ups (at most
    /// [`SMALL_FILE`] plus a page): a fresh one would cost a page fault per page.
    static DIRECT_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The read and write of [`copy_direct`] through the aligned `buf` (the size of `src`
/// rounded up to [`DIRECT_ALIGN`]); `flags` are `src`'s flags before `O_DIRECT`, put
/// back when the rest must go through the cache.
fn read_direct(
    src: &File,
    dst: &File,
    size: u64,
    buf: &mut [u8],
    flags: nix::fcntl::OFlag,
) -> io::Result<u64> {
    use nix::fcntl::{FcntlArg, fcntl};
    let len = buf.len();
    let mut got = 0;
    while got < len {
        match src.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            // A block filesystem ends a direct read short only at the end of the file;
            // others may stop anywhere: the caller copies what is left.
            Ok(n) if n % DIRECT_ALIGN != 0 => {
                got += n;
                break;
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Alignment or direct I/O this filesystem does not accept.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) => return Err(e),
        }
    }
    let n = got.min(size as usize);
    dst.write_all_at(&buf[..n], 0)?;
    if (n as u64) < size {
        fcntl(src, FcntlArg::F_SETFL(flags))?;
    }
    Ok(n as u64)
}

fn timespec(secs: i64, nsecs: i64) -> TimeSpec {
    TimeSpec::new(secs, nsecs)
}

/// Whether an error from copying one xattr may be ignored (the upper filesystem or our
/// privilege cannot hold that attribute).
fn xattr_error_ignorable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTSUP) | Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::ENODATA)
    )
}

/// Copies the xattrs that `list` names, read with `get` and written with `set`,
/// except the overlay's own (escaped ones, which belong to the files, are copied).
/// Attributes the upper filesystem or our privilege cannot hold are skipped.
fn copy_xattrs_with(
    list: io::Result<Vec<u8>>,
    get: impl Fn(&OsStr) -> io::Result<Vec<u8>>,
    set: impl Fn(&OsStr, &[u8]) -> io::Result<()>,
    privileged: bool,
) -> io::Result<()> {
    let list = match list {
        Ok(l) => l,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = OsStr::from_bytes(name);
        if whiteout::xattr_from_layer(name, privileged).is_none() {
            continue;
        }
        let value = match get(name) {
            Ok(v) => v,
            Err(e) if xattr_error_ignorable(&e) => continue,
            Err(e) => return Err(e),
        };
        match set(name, &value) {
            Ok(()) => {}
            Err(e) if xattr_error_ignorable(&e) => {
                tracing::debug!(xattr = ?name, error = %e, "xattr not copied up");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copies the xattrs of `src` to `dst` (see [`copy_xattrs_with`]). `follow_src` reads
/// through a `/proc/self/fd` link.
pub(crate) fn copy_xattrs(
    src: &Path,
    dst: &Path,
    follow_src: bool,
    privileged: bool,
) -> io::Result<()> {
    copy_xattrs_with(
        sys::listxattr(src, follow_src),
        |name| sys::getxattr(src, name, follow_src),
        |name, value| sys::lsetxattr(dst, name, value, 0),
        privileged,
    )
}

/// [`copy_xattrs`] between two open regular files (no path lookups).
fn copy_file_xattrs(src: &File, dst: &File, privileged: bool) -> io::Result<()> {
    copy_xattrs_with(
        sys::flistxattr(src),
        |name| sys::fgetxattr(src, name),
        |name, value| sys::fsetxattr(dst, name, value),
        privileged,
    )
}

impl OverlayFs {
    /// Builds a copy of `src` (metadata `md`) at the fresh work path `tmp`, data
    /// included unless `with_data` is false, fsynced when `durable`. For a regular
    /// file, returns the copy open for reading and writing (it stays valid across the
    /// rename).
    fn build_copy(
        &self,
        src: &Path,
        md: &Metadata,
        tmp: &Path,
        with_data: bool,
        durable: bool,
    ) -> io::Result<Option<File>> {
        let kind = FileKind::from_mode(md.mode());
        match kind {
            FileKind::File => {
                let s = super::file::open_lower(src, 0)?;
                let d = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(tmp)?;
                if with_data {
                    copy_data(&s, &d, md.size(), &self.reflink)?;
                }
                self.copy_file_metadata(&s, md, &d)?;
                if durable {
                    d.sync_all()?;
                }
                return Ok(Some(d));
            }
            FileKind::Dir => std::fs::DirBuilder::new().mode(0o700).create(tmp)?,
            FileKind::Symlink => std::os::unix::fs::symlink(std::fs::read_link(src)?, tmp)?,
            FileKind::Fifo | FileKind::Socket | FileKind::CharDevice | FileKind::BlockDevice => {
                nix::sys::stat::mknod(
                    tmp,
                    SFlag::from_bits_truncate(kind.mode_bits()),
                    Mode::from_bits_truncate(0o600),
                    md.rdev(),
                )?;
            }
        }
        self.copy_metadata(src, md, tmp, true).map(|()| None)
    }

    /// [`Self::copy_metadata`] for a regular file being built, from the open lower file
    /// `s` to the open copy `d` (no path lookups): owner, xattrs, mode, times.
    fn copy_file_metadata(&self, s: &File, md: &Metadata, d: &File) -> io::Result<()> {
        if let Err(e) = std::os::unix::fs::fchown(d, Some(md.uid()), Some(md.gid()))
            && (self.privileged || e.raw_os_error() != Some(libc::EPERM))
        {
            return Err(e);
        }
        copy_file_xattrs(s, d, self.privileged)?;
        d.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
            md.mode() & 0o7777,
        ))?;
        nix::sys::stat::futimens(
            d,
            &timespec(md.atime(), md.atime_nsec()),
            &timespec(md.mtime(), md.mtime_nsec()),
        )?;
        Ok(())
    }

    /// Owner, xattrs, mode and times of `md` (the file at `src`) onto `dst`. `nofollow`
    /// acts on a symlink itself.
    pub(crate) fn copy_metadata(
        &self,
        src: &Path,
        md: &Metadata,
        dst: &Path,
        nofollow: bool,
    ) -> io::Result<()> {
        let kind = FileKind::from_mode(md.mode());
        // Owner first: chown drops setuid bits and file capabilities.
        let chown = if nofollow {
            std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid()))
        } else {
            std::os::unix::fs::chown(dst, Some(md.uid()), Some(md.gid()))
        };
        if let Err(e) = chown
            && (self.privileged || e.raw_os_error() != Some(libc::EPERM))
        {
            return Err(e);
        }
        copy_xattrs(src, dst, src.starts_with("/proc/self/fd"), self.privileged)?;
        if kind != FileKind::Symlink {
            std::fs::set_permissions(
                dst,
                std::os::unix::fs::PermissionsExt::from_mode(md.mode() & 0o7777),
            )?;
        }
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            dst,
            &timespec(md.atime(), md.atime_nsec()),
            &timespec(md.mtime(), md.mtime_nsec()),
            if nofollow {
                UtimensatFlags::NoFollowSymlink
            } else {
                UtimensatFlags::FollowSymlink
            },
        )?;
        Ok(())
    }

    /// Copies the file at `src` (metadata `md`) up to the upper path `dst` (which must
    /// not exist) and returns the new upper file's inode number, and for a regular file
    /// the copy, open for reading and writing.
    fn copy_to_upper(
        &self,
        src: &Path,
        md: &Metadata,
        dst: &Path,
        with_data: bool,
    ) -> io::Result<(u64, Option<File>)> {
        let tmp = self.tmp_path();
        let built = self
            .build_copy(src, md, &tmp, with_data, !self.volatile)
            .and_then(|copy| {
                // The copy's number before it is in place: nothing may fail after the rename.
                let ino = match &copy {
                    Some(f) => f.metadata()?.ino(),
                    None => std::fs::symlink_metadata(&tmp)?.ino(),
                };
                nix::fcntl::renameat2(
                    nix::fcntl::AT_FDCWD,
                    &tmp,
                    nix::fcntl::AT_FDCWD,
                    dst,
                    nix::fcntl::RenameFlags::RENAME_NOREPLACE,
                )?;
                Ok((ino, copy))
            });
        match built {
            Ok(done) => Ok(done),
            Err(e) => {
                let _ = if md.is_dir() {
                    std::fs::remove_dir(&tmp)
                } else {
                    std::fs::remove_file(&tmp)
                };
                Err(e)
            }
        }
    }

    /// Makes sure `node` exists in the upper layer, copying it (and first its parents)
    /// up. Needs the namespace lock held exclusively.
    pub(crate) fn copy_up(&self, node: &Arc<Node>, with_data: bool) -> io::Result<()> {
        self.copy_up_file(node, with_data).map(drop)
    }

    /// [`Self::copy_up`], handing back the copy of a regular file copied by this call,
    /// open for reading and writing (an open that caused the copy-up uses it instead of
    /// opening the new upper file again).
    pub(crate) fn copy_up_file(
        &self,
        node: &Arc<Node>,
        with_data: bool,
    ) -> io::Result<Option<File>> {
        self.check_writable()?;
        let st = node.snapshot();
        if st.upper {
            return Ok(None);
        }
        if let Some(f) = &st.detached {
            return self
                .copy_up_detached(node, f.clone(), with_data)
                .map(|()| None);
        }
        let parent = st.parent.clone().ok_or_else(|| errno(libc::ENOENT))?;
        self.copy_up(&parent, true)?;
        let rel = self.rel_path(node)?;
        let layer = st.lower.ok_or_else(|| errno(libc::EIO))?;
        let src = self.lower_at(layer, &rel);
        let lower_md = std::fs::symlink_metadata(&src)?;
        let (upper_ino, copy) =
            self.copy_to_upper(&src, &lower_md, &self.upper_at(&rel), with_data)?;
        self.idents.alias((UPPER_LAYER, upper_ino), node.ino);
        if st.lower_hardlink {
            self.idents.unmap(Self::ident_of_lower(layer, &lower_md));
        }
        let mut s = node.lock();
        s.upper = true;
        s.lower_hardlink = false;
        tracing::debug!(ino = node.ino, path = %rel.display(), "copied up");
        Ok(copy)
    }

    /// Copy-up of a lower file that was removed from the namespace while open: the copy
    /// goes to the work directory and is unlinked at once, living on as a descriptor.
    fn copy_up_detached(&self, node: &Arc<Node>, f: Arc<File>, with_data: bool) -> io::Result<()> {
        let src = super::proc_fd_path(&f);
        let md = f.metadata()?;
        let tmp = self.tmp_path();
        // Unlinked at once: no name can outlive a crash, so no fsync.
        self.build_copy(&src, &md, &tmp, with_data, false)?;
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        std::fs::remove_file(&tmp)?;
        let mut s = node.lock();
        s.detached = Some(Arc::new(fd));
        s.upper = true;
        Ok(())
    }

    /// Copies a directory's whole merged subtree into the upper layer. Afterwards no
    /// lower layer contributes to anything below it (callers then mark it opaque).
    pub(crate) fn copy_up_tree(&self, dir: &Arc<Node>) -> io::Result<()> {
        self.copy_up(dir, true)?;
        let st = dir.snapshot();
        let rel = self.rel_path(dir)?;
        for m in self.list_merged(&st, &rel)? {
            if m.ident.0 == UPPER_LAYER && m.kind != FileKind::Dir {
                continue;
            }
            let Some(r) = self.resolve(&st, &rel, &m.name)? else {
                continue;
            };
            let child = self.node_for(dir, &m.name, &r, false);
            if r.kind == FileKind::Dir {
                self.copy_up_tree(&child)?;
            } else {
                self.copy_up(&child, true)?;
            }
        }
        dir.lock().dir_lowers.clear();
        Ok(())
    }
}

impl OverlayFs {
    /// Whether `ino` is in the upper layer now.
    pub fn is_upper(&self, ino: u64) -> io::Result<bool> {
        Ok(self.nodes.get(ino)?.snapshot().upper)
    }

    /// Splits `ino` from its name: the name is copied up (if it is not already) and gets
    /// a new inode number at its next lookup, while `ino` stays on the lower file for the
    /// opens it already has.
    ///
    /// FUSE passthrough pins an inode to one backing file while it is open, so an inode
    /// open read-only on a lower file cannot also be opened on its upper copy. The FUSE
    /// adapter then splits the inode and answers the open with `ESTALE`; the kernel looks
    /// the name up again (`LOOKUP_REVAL`), finds the new inode and opens that. Descriptors
    /// opened before keep reading the lower file, as with kernel overlayfs before 4.19.
    pub fn split_inode(&self, ino: u64) -> io::Result<()> {
        let _t = self.write_tree();
        let node = self.nodes.get(ino)?;
        let st = node.snapshot();
        if st.detached.is_some() {
            return Ok(());
        }
        let parent = st.parent.clone().ok_or_else(|| errno(libc::ENOENT))?;
        self.copy_up(&parent, true)?;
        let rel = self.rel_path(&node)?;
        let layer = st.lower.ok_or_else(|| errno(libc::EIO))?;
        let src = self.lower_at(layer, &rel);
        let lower_fd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&src)?;
        let dst = self.upper_at(&rel);
        if st.upper {
            // Already copied up under this number: give the upper file a new one.
            let umd = std::fs::symlink_metadata(&dst)?;
            self.idents.unmap((UPPER_LAYER, umd.ino()));
        } else {
            let md = std::fs::symlink_metadata(&src)?;
            self.copy_to_upper(&src, &md, &dst, true)?;
        }
        let mut s = node.lock();
        s.detached = Some(Arc::new(lower_fd));
        s.parent = None;
        s.upper = false;
        tracing::debug!(ino, path = %rel.display(), "inode split from its name");
        Ok(())
    }
}
