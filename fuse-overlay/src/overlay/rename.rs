//! Renaming: moving an entry within or across directories of the overlay (copying up
//! what must be, whiteouts for what stays below) and RENAME_EXCHANGE.

use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::MetadataExt;

use super::attr::FileKind;
use super::{OverlayFs, errno, name_ok, whiteout};

impl OverlayFs {
    /// Renames `name` in `parent` to `newname` in `newparent`. `flags` may hold
    /// `RENAME_NOREPLACE` or `RENAME_EXCHANGE`; `RENAME_WHITEOUT` answers `EINVAL`.
    ///
    /// A directory with lower parts is copied up whole first (its merged subtree), then
    /// renamed in the upper layer and marked opaque; kernel overlayfs without
    /// `redirect_dir` answers `EXDEV` here and leaves the copy to the caller.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> io::Result<()> {
        self.check_writable()?;
        if flags == libc::RENAME_EXCHANGE {
            return self.exchange(parent, name, newparent, newname);
        }
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(errno(libc::EINVAL));
        }
        name_ok(newname)?;
        if whiteout::is_wh_name(newname) {
            return Err(errno(libc::EINVAL));
        }
        let _t = self.write_tree();
        let (spnode, spst, sprel) = self.dir_node(parent)?;
        let (dpnode, dpst, dprel) = self.dir_node(newparent)?;
        let src = self
            .resolve(&spst, &sprel, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        let dst = self.resolve(&dpst, &dprel, newname)?;
        let src_is_dir = src.kind == FileKind::Dir;
        let drel = dprel.join(newname);
        if let Some(d) = &dst {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(errno(libc::EEXIST));
            }
            if self.idents.ino_for(d.ident) == self.idents.ino_for(src.ident) {
                return Ok(());
            }
            match (src_is_dir, d.kind == FileKind::Dir) {
                (true, false) => return Err(errno(libc::ENOTDIR)),
                (false, true) => return Err(errno(libc::EISDIR)),
                (true, true) => {
                    let dst_st = Self::state_from(&dpnode, newname, d);
                    if !self.list_merged(&dst_st, &drel)?.is_empty() {
                        return Err(errno(libc::ENOTEMPTY));
                    }
                }
                (false, false) => {}
            }
        }
        self.copy_up(&spnode, true)?;
        self.copy_up(&dpnode, true)?;
        let snode = self.node_for(&spnode, name, &src, false);
        let mut need_opaque = false;
        if src_is_dir {
            if !src.dir_lowers.is_empty() {
                self.copy_up_tree(&snode)?;
                need_opaque = true;
            }
        } else {
            self.copy_up(&snode, true)?;
        }
        let spst = spnode.snapshot();
        let dpst = dpnode.snapshot();
        let srel = sprel.join(name);
        let need_whiteout = self.lower_has(&spst, &sprel, name)?;
        let over_whiteout = whiteout::remove_whiteout(&self.upper_at(&dprel), newname)?;
        if src_is_dir && (over_whiteout || self.lower_has(&dpst, &dprel, newname)?) {
            need_opaque = true;
        }
        let dst_path = self.upper_at(&drel);
        if let Some(d) = &dst {
            self.detach(d, &self.resolved_path(d, &drel))?;
            if d.upper && d.kind == FileKind::Dir {
                self.clear_whiteouts(&dst_path)?;
            }
        }
        let src_path = self.upper_at(&srel);
        let mut whiteout_left = false;
        if need_whiteout && self.privileged {
            match nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &src_path,
                nix::fcntl::AT_FDCWD,
                &dst_path,
                nix::fcntl::RenameFlags::RENAME_WHITEOUT,
            ) {
                Ok(()) => whiteout_left = true,
                Err(nix::errno::Errno::EINVAL | nix::errno::Errno::EPERM) => {
                    std::fs::rename(&src_path, &dst_path)?;
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            std::fs::rename(&src_path, &dst_path)?;
        }
        if need_whiteout && !whiteout_left {
            whiteout::make_whiteout(&self.upper_at(&sprel), name, self.privileged)?;
        }
        if need_opaque {
            whiteout::make_opaque(&dst_path, self.privileged)?;
        }
        if let Some(d) = &dst
            && d.upper
            && (d.kind == FileKind::Dir || d.md.nlink() <= 1)
        {
            self.idents.unmap(d.ident);
        }
        let mut s = snode.lock();
        s.parent = Some(dpnode.clone());
        s.name = newname.to_os_string();
        s.upper = true;
        if need_opaque {
            s.dir_lowers.clear();
        }
        Ok(())
    }

    /// `RENAME_EXCHANGE`: both entries are copied up (a directory with lower parts with
    /// its whole merged subtree), swapped in the upper layer, and a directory that lands
    /// where a lower layer has that name is made opaque.
    pub(super) fn exchange(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
    ) -> io::Result<()> {
        name_ok(newname)?;
        let _t = self.write_tree();
        let (pa, pa_st, pa_rel) = self.dir_node(parent)?;
        let (pb, pb_st, pb_rel) = self.dir_node(newparent)?;
        let a = self
            .resolve(&pa_st, &pa_rel, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        let b = self
            .resolve(&pb_st, &pb_rel, newname)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        if self.idents.ino_for(a.ident) == self.idents.ino_for(b.ident) {
            return Ok(());
        }
        self.copy_up(&pa, true)?;
        self.copy_up(&pb, true)?;
        let na = self.node_for(&pa, name, &a, false);
        let nb = self.node_for(&pb, newname, &b, false);
        for (node, r) in [(&na, &a), (&nb, &b)] {
            if r.kind == FileKind::Dir && !r.dir_lowers.is_empty() {
                self.copy_up_tree(node)?;
            } else {
                self.copy_up(node, true)?;
            }
        }
        let a_path = self.upper_at(&pa_rel.join(name));
        let b_path = self.upper_at(&pb_rel.join(newname));
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &a_path,
            nix::fcntl::AT_FDCWD,
            &b_path,
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        )?;
        // `a` now lives at b's name and the other way round.
        let pa_st = pa.snapshot();
        let pb_st = pb.snapshot();
        let mut opaque = [false, false];
        if a.kind == FileKind::Dir
            && (!a.dir_lowers.is_empty() || self.lower_has(&pb_st, &pb_rel, newname)?)
        {
            whiteout::make_opaque(&b_path, self.privileged)?;
            opaque[0] = true;
        }
        if b.kind == FileKind::Dir
            && (!b.dir_lowers.is_empty() || self.lower_has(&pa_st, &pa_rel, name)?)
        {
            whiteout::make_opaque(&a_path, self.privileged)?;
            opaque[1] = true;
        }
        for (node, parent, n, op) in [(&na, &pb, newname, opaque[0]), (&nb, &pa, name, opaque[1])] {
            let mut s = node.lock();
            s.parent = Some(parent.clone());
            s.name = n.to_os_string();
            s.upper = true;
            if op {
                s.dir_lowers.clear();
            }
        }
        Ok(())
    }
}
