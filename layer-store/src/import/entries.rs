//! Extracting each kind of entry: directories, regular files (holes kept, held to the
//! import's limits), symlinks, device nodes and FIFOs, hard links, and their owners
//! and extended attributes.

use super::*;

impl Extractor {
    pub(super) fn directory(&mut self, path: &EntryPath, meta: Meta, shown: &str) -> Result<()> {
        let dir = path.parent();
        let parent = self.open_dir(&dir, shown)?;
        let name = path.file_name().unwrap_or_default();
        let opaque = self.replace_whiteout(parent.as_fd(), path, true, shown)?;
        if !self.clear_slot(parent.as_fd(), path, true, shown)? {
            sys::mkdirat(parent.as_fd(), name, 0o700).map_err(extract_err(shown))?;
        }
        self.linkable.remove(path);
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        let file = sys::open_beneath(parent.as_fd(), name, flags, 0)
            .map(File::from)
            .map_err(|e| self.walk_error(e, shown))?;
        self.owner_and_xattrs(&file, &meta, shown)?;
        if opaque {
            let key = OsStr::new(self.privilege.opaque_xattr());
            sys::fsetxattr(file.as_fd(), key, b"y").map_err(extract_err(shown))?;
        }
        self.dirs.push((path.clone(), meta));
        self.keep_parent(dir, parent);
        Ok(())
    }

    pub(super) fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &EntryPath,
        meta: Meta,
        shown: &str,
    ) -> Result<()> {
        let dir = path.parent();
        let parent = self.open_dir(&dir, shown)?;
        let name = path.file_name().unwrap_or_default();
        self.replace_whiteout(parent.as_fd(), path, false, shown)?;
        self.clear_slot(parent.as_fd(), path, false, shown)?;
        self.admit(entry, parent.as_fd(), shown)?;
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        let file = sys::open_beneath(parent.as_fd(), name, flags, 0o600)
            .map(File::from)
            .map_err(|e| self.walk_error(e, shown))?;
        self.copy_keeping_holes(entry, &file, shown)?;
        self.owner_and_xattrs(&file, &meta, shown)?;
        set_mode_and_times(&file, &meta, shown)?;
        self.linkable.insert(path.clone());
        self.keep_parent(dir, parent);
        Ok(())
    }

    /// Refuses an entry before any of it is written: a sparse entry declaring far
    /// more than its data, or one the store's free space (less the reserve) or the
    /// layer's size limit cannot take.
    pub(super) fn admit<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        parent: BorrowedFd<'_>,
        shown: &str,
    ) -> Result<()> {
        let declared = entry.size();
        let data = entry.header().entry_size().map_err(extract_err(shown))?;
        if entry.header().entry_type() == EntryType::GNUSparse
            && declared > data.saturating_mul(self.limits.sparse_ratio) + SPARSE_SLACK
        {
            return Err(Error::SparseBomb {
                path: shown.to_owned(),
                declared,
                data,
            });
        }
        let left = self.limits.max_bytes.saturating_sub(self.written);
        let needed = data.min(declared).min(left);
        let st = nix::sys::statvfs::fstatvfs(parent).map_err(|e| Error::Extract {
            path: shown.to_owned(),
            source: e.into(),
        })?;
        let available = st.blocks_available() as u64 * st.fragment_size() as u64;
        if available < needed.saturating_add(self.limits.reserve_free) {
            return Err(Error::NoSpace {
                path: shown.to_owned(),
                needed,
                available,
                reserve: self.limits.reserve_free,
            });
        }
        Ok(())
    }

    /// Copies an entry's data into `file`, leaving aligned blocks of zeros (a sparse
    /// entry's holes, or zeros stored as data) as holes; counts what is written
    /// against the layer's size limit.
    pub(super) fn copy_keeping_holes<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        file: &File,
        shown: &str,
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let mut offset: u64 = 0;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Read(e)),
            };
            let mut at = 0;
            while at < n {
                // Up to the next block boundary of the file.
                let room = (HOLE_BLOCK - (offset + at as u64) % HOLE_BLOCK) as usize;
                let end = (at + room).min(n);
                let piece = &self.buf[at..end];
                if piece.iter().any(|b| *b != 0) {
                    self.written += piece.len() as u64;
                    if self.written > self.limits.max_bytes {
                        return Err(Error::TooLarge {
                            limit: self.limits.max_bytes,
                        });
                    }
                    file.write_all_at(piece, offset + at as u64)
                        .map_err(extract_err(shown))?;
                }
                at = end;
            }
            offset += n as u64;
        }
        // Trailing holes: the length says where the file ends.
        file.set_len(offset).map_err(extract_err(shown))?;
        Ok(())
    }

    pub(super) fn symlink(
        &mut self,
        path: &EntryPath,
        target: &OsStr,
        meta: Meta,
        shown: &str,
    ) -> Result<()> {
        let dir = path.parent();
        let parent = self.open_dir(&dir, shown)?;
        let name = path.file_name().unwrap_or_default();
        self.replace_whiteout(parent.as_fd(), path, false, shown)?;
        self.clear_slot(parent.as_fd(), path, false, shown)?;
        sys::symlinkat(target, parent.as_fd(), name).map_err(extract_err(shown))?;
        self.finish_special(parent.as_fd(), name, &meta, true, shown)?;
        self.linkable.insert(path.clone());
        self.keep_parent(dir, parent);
        Ok(())
    }

    pub(super) fn special(
        &mut self,
        path: &EntryPath,
        file_type: libc::mode_t,
        dev: libc::dev_t,
        meta: Meta,
        shown: &str,
    ) -> Result<()> {
        if file_type != libc::S_IFIFO && self.privilege == Privilege::Unprivileged {
            self.stats.skipped_devices += 1;
            self.skipped.insert(path.clone());
            return Ok(());
        }
        let dir = path.parent();
        let parent = self.open_dir(&dir, shown)?;
        let name = path.file_name().unwrap_or_default();
        self.replace_whiteout(parent.as_fd(), path, false, shown)?;
        self.clear_slot(parent.as_fd(), path, false, shown)?;
        sys::mknodat(parent.as_fd(), name, file_type | 0o600, dev).map_err(extract_err(shown))?;
        self.finish_special(parent.as_fd(), name, &meta, false, shown)?;
        self.linkable.insert(path.clone());
        self.keep_parent(dir, parent);
        Ok(())
    }

    /// Owner, mode (not for symlinks), xattrs and times of an entry that cannot be
    /// opened for writing (symlink, device, fifo), through its parent.
    pub(super) fn finish_special(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        meta: &Meta,
        symlink: bool,
        shown: &str,
    ) -> Result<()> {
        if self.privilege == Privilege::Root {
            sys::lchownat(parent, name, meta.uid, meta.gid).map_err(extract_err(shown))?;
        }
        if !symlink {
            sys::fchmodat(parent, name, meta.mode).map_err(extract_err(shown))?;
        }
        for (key, value) in &meta.xattrs {
            if self.keep_xattr(key, symlink) {
                sys::lsetxattr_at(parent, name, key, value).map_err(extract_err(shown))?;
            }
        }
        sys::lutimensat(parent, name, meta.atime, meta.mtime).map_err(extract_err(shown))
    }

    pub(super) fn hard_link(
        &mut self,
        path: &EntryPath,
        target: Option<Vec<u8>>,
        shown: &str,
    ) -> Result<()> {
        let target = target.unwrap_or_default();
        let target_shown = String::from_utf8_lossy(&target).into_owned();
        let refuse = |reason| Error::HardLink {
            path: shown.to_owned(),
            target: target_shown.clone(),
            reason,
        };
        let target = EntryPath::parse(&target).map_err(refuse)?;
        if target.is_root() {
            return Err(refuse("target is the layer root"));
        }
        if &target == path {
            return Err(refuse("links to itself"));
        }
        if self.skipped.contains(&target) {
            self.stats.skipped_devices += 1;
            self.skipped.insert(path.clone());
            return Ok(());
        }
        if !self.linkable.contains(&target) {
            return Err(refuse(
                "target is not an earlier non-directory entry of this layer",
            ));
        }
        let target_dir = sys::open_beneath(
            self.root.as_fd(),
            &target.parent().to_os_string(),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .map_err(|e| match errno(&e) {
            libc::ELOOP => refuse("target passes through a symlink"),
            _ => self.walk_error(e, &target_shown),
        })?;
        let dir = path.parent();
        let parent = self.open_dir(&dir, shown)?;
        let name = path.file_name().unwrap_or_default();
        self.replace_whiteout(parent.as_fd(), path, false, shown)?;
        self.clear_slot(parent.as_fd(), path, false, shown)?;
        let target_name = target.file_name().unwrap_or_default();
        sys::linkat(target_dir.as_fd(), target_name, parent.as_fd(), name)
            .map_err(extract_err(shown))?;
        self.linkable.insert(path.clone());
        self.keep_parent(dir, parent);
        Ok(())
    }

    /// Owner (as root) and the kept xattrs, on an open file or directory. The owner
    /// comes first: chown clears set-id bits and file capabilities.
    pub(super) fn owner_and_xattrs(&mut self, file: &File, meta: &Meta, shown: &str) -> Result<()> {
        if self.privilege == Privilege::Root {
            std::os::unix::fs::fchown(file, Some(meta.uid), Some(meta.gid))
                .map_err(extract_err(shown))?;
        }
        for (key, value) in &meta.xattrs {
            if self.keep_xattr(key, false) {
                sys::fsetxattr(file.as_fd(), key, value).map_err(extract_err(shown))?;
            }
        }
        Ok(())
    }

    pub(super) fn keep_xattr(&mut self, key: &OsStr, symlink: bool) -> bool {
        let k = key.as_bytes();
        let user = k.starts_with(b"user.");
        let keep = !(k.starts_with(b"trusted.overlay.")
            || k.starts_with(b"user.overlay.")
            || (self.privilege == Privilege::Unprivileged && !user)
            || (symlink && user));
        if !keep {
            self.stats.skipped_xattrs += 1;
        }
        keep
    }
}
