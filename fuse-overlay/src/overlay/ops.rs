//! Operations that change the namespace or metadata: create, mkdir, mknod, symlink,
//! link, unlink, rmdir, setattr; and statfs (rename is in `rename`).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use super::attr::{Attr, Caller, Entry, FileKind, SetAttr, SetTime, StatFs};
use super::file::Opened;
use super::inode::{Node, NodeState};
use super::lookup::{Resolution, Resolved};
use super::{OverlayFs, errno, name_ok, whiteout};

/// Where a new entry goes, prepared by [`OverlayFs::prepare_create`].
struct NewEntry {
    parent: Arc<Node>,
    rel: PathBuf,
    path: PathBuf,
    /// A whiteout was removed to make room: a new directory there must be opaque.
    over_whiteout: bool,
    /// Owner of the new entry as stored: the caller's (mapped), with the parent's group
    /// when the parent is setgid; none for a hard link (it keeps its inode's).
    owner: Option<(u32, u32)>,
    parent_setgid: bool,
}

fn set_time(t: Option<SetTime>) -> TimeSpec {
    match t {
        None => TimeSpec::UTIME_OMIT,
        Some(SetTime::Now) => TimeSpec::UTIME_NOW,
        Some(SetTime::At(t)) => {
            let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            TimeSpec::new(d.as_secs() as i64, i64::from(d.subsec_nanos()))
        }
    }
}

impl OverlayFs {
    /// Checks that `name` is free in `parent`, copies the parent up and removes any
    /// whiteout under the name. `caller` owns the new entry (none for a hard link); an
    /// owner outside the id mapping cannot be stored (EOVERFLOW, as an idmapped mount
    /// answers). Needs the namespace lock held exclusively.
    fn prepare_create(
        &self,
        parent: u64,
        name: &OsStr,
        caller: Option<Caller>,
    ) -> io::Result<NewEntry> {
        name_ok(name)?;
        let owner = match caller {
            Some(c) => Some((
                self.uid_map
                    .stored(c.uid)
                    .ok_or_else(|| errno(libc::EOVERFLOW))?,
                self.gid_map
                    .stored(c.gid)
                    .ok_or_else(|| errno(libc::EOVERFLOW))?,
            )),
            None => None,
        };
        if whiteout::is_wh_name(name) {
            return Err(errno(libc::EINVAL));
        }
        let (pnode, pst, prel) = self.dir_node(parent)?;
        if pst.detached.is_some() {
            return Err(errno(libc::ENOENT));
        }
        let upper_whiteout = match self.resolve_detailed(&pst, &prel, name)? {
            Resolution::Found(_) => return Err(errno(libc::EEXIST)),
            Resolution::Absent => false,
            Resolution::WhitedOutInUpper => true,
        };
        self.copy_up(&pnode, true)?;
        let pdir = self.upper_at(&prel);
        let over_whiteout = upper_whiteout && whiteout::remove_whiteout(&pdir, name)?;
        let pmd = std::fs::symlink_metadata(&pdir)?;
        let parent_setgid = pmd.mode() & libc::S_ISGID != 0;
        Ok(NewEntry {
            parent: pnode,
            rel: prel.join(name),
            path: pdir.join(name),
            over_whiteout,
            owner: owner.map(|(uid, gid)| (uid, if parent_setgid { pmd.gid() } else { gid })),
            parent_setgid,
        })
    }

    /// Gives a just-created upper entry its owner and exact mode, registers its inode
    /// (one lookup) and returns the entry. `file` is the new entry open, when it is a
    /// regular file just created (then no path is looked up again).
    fn finish_create(
        &self,
        new: &NewEntry,
        name: &OsStr,
        mode: u32,
        file: Option<&File>,
    ) -> io::Result<Entry> {
        let stat = || match file {
            Some(f) => f.metadata(),
            None => std::fs::symlink_metadata(&new.path),
        };
        let mut md = stat()?;
        let mut changed = false;
        let kind = FileKind::from_mode(md.mode());
        let mut chowned = false;
        if let Some((uid, gid)) = new.owner
            && self.privileged
            && (md.uid() != uid || md.gid() != gid)
        {
            match file {
                Some(f) => std::os::unix::fs::fchown(f, Some(uid), Some(gid))?,
                None => std::os::unix::fs::lchown(&new.path, Some(uid), Some(gid))?,
            }
            chowned = true;
            changed = true;
        }
        if kind != FileKind::Symlink {
            let mut want = mode & 0o7777;
            if kind == FileKind::Dir && new.parent_setgid {
                want |= libc::S_ISGID;
            }
            // The process umask may have cleared bits, and a chown clears setuid and
            // setgid of a file (the mode read before it no longer tells).
            if md.mode() & 0o7777 != want || (chowned && want & 0o6000 != 0) {
                let perm = std::fs::Permissions::from_mode(want);
                match file {
                    Some(f) => f.set_permissions(perm)?,
                    None => std::fs::set_permissions(&new.path, perm)?,
                }
                changed = true;
            }
        }
        if kind == FileKind::Dir && new.over_whiteout {
            whiteout::make_opaque(&new.path, self.privileged)?;
            changed = true;
        }
        if changed {
            md = stat()?;
        }
        let state = NodeState {
            parent: Some(new.parent.clone()),
            name: name.to_os_string(),
            upper: true,
            lower: None,
            dir_lowers: Vec::new(),
            detached: None,
            lower_hardlink: false,
        };
        let ino = self.idents.ino_for(Self::ident_of_upper(&md));
        let node = self.nodes.upsert(ino, kind, state, true);
        let st = node.snapshot();
        tracing::trace!(ino, path = %new.rel.display(), "created");
        Ok(self.entry_of(&node, &md, &st))
    }

    /// Creates and opens a regular file.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> io::Result<(Entry, Opened)> {
        self.check_writable()?;
        let _t = self.write_tree();
        let new = self.prepare_create(parent, name, Some(caller))?;
        let keep = flags & (libc::O_SYNC | libc::O_DSYNC | libc::O_NONBLOCK);
        let file: File = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .custom_flags(keep | libc::O_CLOEXEC)
            .open(&new.path)?;
        let entry = self.finish_create(&new, name, mode, Some(&file))?;
        let node = self.nodes.get(entry.attr.ino)?;
        Ok((entry, self.opened_upper(node, file)))
    }

    /// Creates a directory.
    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, caller: Caller) -> io::Result<Entry> {
        self.check_writable()?;
        let _t = self.write_tree();
        let new = self.prepare_create(parent, name, Some(caller))?;
        std::fs::DirBuilder::new()
            .mode(mode & 0o7777)
            .create(&new.path)?;
        self.finish_create(&new, name, mode, None)
    }

    /// Creates a file node: regular file, fifo, socket or device.
    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        caller: Caller,
    ) -> io::Result<Entry> {
        self.check_writable()?;
        let kind = FileKind::from_mode(mode);
        if matches!(kind, FileKind::Dir | FileKind::Symlink) {
            return Err(errno(libc::EINVAL));
        }
        let _t = self.write_tree();
        let new = self.prepare_create(parent, name, Some(caller))?;
        nix::sys::stat::mknod(
            &new.path,
            SFlag::from_bits_truncate(kind.mode_bits()),
            Mode::from_bits_truncate(mode & 0o7777),
            rdev,
        )?;
        self.finish_create(&new, name, mode, None)
    }

    /// Creates a symbolic link `name` → `target`.
    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
        caller: Caller,
    ) -> io::Result<Entry> {
        self.check_writable()?;
        let _t = self.write_tree();
        let new = self.prepare_create(parent, name, Some(caller))?;
        std::os::unix::fs::symlink(target, &new.path)?;
        self.finish_create(&new, name, 0o777, None)
    }

    /// Creates a hard link `newname` in `newparent` to `ino` (copied up first).
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> io::Result<Entry> {
        self.check_writable()?;
        let _t = self.write_tree();
        let node = self.nodes.get(ino)?;
        if node.kind == FileKind::Dir {
            return Err(errno(libc::EPERM));
        }
        let new = self.prepare_create(newparent, newname, None)?;
        self.copy_up(&node, true)?;
        let st = node.snapshot();
        let src = self.backing_path(&node, &st)?;
        if st.detached.is_some() {
            nix::unistd::linkat(
                nix::fcntl::AT_FDCWD,
                &src,
                nix::fcntl::AT_FDCWD,
                &new.path,
                nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
            )?;
        } else {
            std::fs::hard_link(&src, &new.path)?;
        }
        let md = std::fs::symlink_metadata(&new.path)?;
        let node = self.nodes.upsert(node.ino, node.kind, st, true);
        let st = node.snapshot();
        Ok(self.entry_of(&node, &md, &st))
    }

    /// Gives the live inode of a name that is about to disappear a descriptor of its
    /// backing file, so open handles and `getattr` keep working.
    pub(super) fn detach(&self, r: &Resolved, path: &Path) -> io::Result<()> {
        let ino = self.idents.ino_for(r.ident);
        if let Some(node) = self.nodes.try_get(ino) {
            let fd = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(path)?;
            let mut s = node.lock();
            s.detached = Some(Arc::new(fd));
            s.parent = None;
        }
        Ok(())
    }

    /// Path of the topmost file of a resolved entry.
    pub(super) fn resolved_path(&self, r: &Resolved, rel: &Path) -> PathBuf {
        if r.upper {
            self.upper_at(rel)
        } else {
            self.lower_at(r.lower.unwrap_or_default(), rel)
        }
    }

    /// Moves an upper directory out of the way (into the work directory) and deletes it
    /// there; it may still hold whiteouts.
    pub(super) fn remove_upper_dir(&self, path: &Path) -> io::Result<()> {
        let tmp = self.tmp_path();
        std::fs::rename(path, &tmp)?;
        std::fs::remove_dir_all(&tmp)
    }

    /// Removes whiteouts (and the opaque marker) from an upper directory that is empty
    /// in the merged view, so that it can be replaced by rename.
    pub(super) fn clear_whiteouts(&self, path: &Path) -> io::Result<()> {
        for de in std::fs::read_dir(path)? {
            let de = de?;
            std::fs::remove_file(de.path())?;
        }
        Ok(())
    }

    /// Removes the non-directory `name`; a whiteout hides any lower file of that name.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        self.check_writable()?;
        let _t = self.write_tree();
        let (pnode, pst, prel) = self.dir_node(parent)?;
        let r = self
            .resolve(&pst, &prel, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        if r.kind == FileKind::Dir {
            return Err(errno(libc::EISDIR));
        }
        self.copy_up(&pnode, true)?;
        let pst = pnode.snapshot();
        // Found in a lower layer: that layer still has it. Only an upper file needs
        // the layers below looked at.
        let need_whiteout = r.lower.is_some() || self.lower_has(&pst, &prel, name)?;
        let rel = prel.join(name);
        self.detach(&r, &self.resolved_path(&r, &rel))?;
        if r.upper {
            std::fs::remove_file(self.upper_at(&rel))?;
            if r.md.nlink() <= 1 {
                self.idents.unmap(r.ident);
            }
        }
        if need_whiteout {
            whiteout::make_whiteout(&self.upper_at(&prel), name, self.privileged)?;
        }
        Ok(())
    }

    /// Removes the directory `name`, which must be empty in the merged view.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        self.check_writable()?;
        let _t = self.write_tree();
        let (pnode, pst, prel) = self.dir_node(parent)?;
        let r = self
            .resolve(&pst, &prel, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        if r.kind != FileKind::Dir {
            return Err(errno(libc::ENOTDIR));
        }
        let rel = prel.join(name);
        let cst = Self::state_from(&pnode, name, &r);
        if !self.list_merged(&cst, &rel)?.is_empty() {
            return Err(errno(libc::ENOTEMPTY));
        }
        self.copy_up(&pnode, true)?;
        let pst = pnode.snapshot();
        let need_whiteout = r.lower.is_some() || self.lower_has(&pst, &prel, name)?;
        self.detach(&r, &self.resolved_path(&r, &rel))?;
        if r.upper {
            self.remove_upper_dir(&self.upper_at(&rel))?;
            self.idents.unmap(r.ident);
        }
        if need_whiteout {
            whiteout::make_whiteout(&self.upper_at(&prel), name, self.privileged)?;
        }
        Ok(())
    }

    /// Changes attributes (copying up first; a truncation to zero copies no data).
    /// `fh` is the handle the change came through, if any.
    pub fn setattr(&self, ino: u64, fh: Option<u64>, set: &SetAttr) -> io::Result<Attr> {
        self.check_writable()?;
        // An owner outside the id mapping cannot be stored: refused before any change.
        let map = |id: Option<u32>, m: &super::idmap::IdMap| {
            id.map(|id| m.stored(id).ok_or_else(|| errno(libc::EINVAL)))
                .transpose()
        };
        let (uid, gid) = (map(set.uid, &self.uid_map)?, map(set.gid, &self.gid_map)?);
        let _t = self.write_tree();
        let node = self.nodes.get(ino)?;
        self.copy_up(&node, set.size != Some(0))?;
        let st = node.snapshot();
        let path = self.backing_path(&node, &st)?;
        // A detached inode is reached through its /proc/self/fd link, which must be
        // followed; a named one must not be (it may be a symlink).
        let follow = st.detached.is_some();
        if let Some(size) = set.size {
            if node.kind == FileKind::Dir {
                return Err(errno(libc::EISDIR));
            }
            match fh.and_then(|fh| self.handle_upper_file(fh)) {
                Some(f) if f.set_len(size).is_ok() => {}
                _ => std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(size)?,
            }
        }
        if uid.is_some() || gid.is_some() {
            if follow {
                std::os::unix::fs::chown(&path, uid, gid)?;
            } else {
                std::os::unix::fs::lchown(&path, uid, gid)?;
            }
        }
        if let Some(mode) = set.mode {
            if node.kind == FileKind::Symlink {
                return Err(errno(libc::EOPNOTSUPP));
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))?;
        } else if set.kill_suidgid && node.kind == FileKind::File {
            super::file::kill_suid(&File::open(&path)?)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &path,
                &set_time(set.atime),
                &set_time(set.mtime),
                if follow {
                    UtimensatFlags::FollowSymlink
                } else {
                    UtimensatFlags::NoFollowSymlink
                },
            )?;
        }
        let md = self.node_metadata(&node, &st)?;
        Ok(self.attr_of(ino, &md, &st))
    }

    /// Statistics of the upper layer's filesystem.
    pub fn statfs(&self) -> io::Result<StatFs> {
        let s = nix::sys::statvfs::statvfs(&self.upper.path)?;
        Ok(StatFs {
            blocks: s.blocks(),
            bfree: s.blocks_free(),
            bavail: s.blocks_available(),
            files: s.files(),
            ffree: s.files_free(),
            bsize: s.block_size() as u32,
            namelen: s.name_max() as u32,
            frsize: s.fragment_size() as u32,
        })
    }

    /// Flushes the upper directory of `ino` (fsyncdir).
    pub fn fsyncdir(&self, ino: u64) -> io::Result<()> {
        let _t = self.read_tree();
        let node = self.nodes.get(ino)?;
        let st = node.snapshot();
        if !st.upper {
            return Ok(());
        }
        File::open(self.backing_path(&node, &st)?)?.sync_all()
    }
}
