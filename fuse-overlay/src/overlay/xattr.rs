//! Extended attributes. The overlay's own namespace (`trusted.overlay.*`, or
//! `user.overlay.*` unprivileged) is escaped as kernel overlayfs does: what a caller sets
//! as `trusted.overlay.X` is stored as `trusted.overlay.overlay.X`, and the overlay's own
//! markers are never shown. A change copies the file up first.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::inode::{Node, NodeState};
use super::{OverlayFs, sys, whiteout};

impl OverlayFs {
    /// Path to act on and whether it is a `/proc/self/fd` link (which xattr calls must
    /// follow; they must not follow a named symlink).
    fn xattr_path(&self, node: &Arc<Node>, st: &NodeState) -> io::Result<(PathBuf, bool)> {
        Ok((self.backing_path(node, st)?, st.detached.is_some()))
    }

    /// Value of xattr `name` of `ino`.
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> io::Result<Vec<u8>> {
        let name = &whiteout::xattr_to_layer(name, self.privileged);
        let _t = self.read_tree();
        let node = self.nodes.get(ino)?;
        let st = node.snapshot();
        let (path, follow) = self.xattr_path(&node, &st)?;
        sys::getxattr(&path, name, follow)
    }

    /// NUL-separated names of the xattrs of `ino`.
    pub fn listxattr(&self, ino: u64) -> io::Result<Vec<u8>> {
        let _t = self.read_tree();
        let node = self.nodes.get(ino)?;
        let st = node.snapshot();
        let (path, follow) = self.xattr_path(&node, &st)?;
        let raw = sys::listxattr(&path, follow)?;
        let mut out = Vec::with_capacity(raw.len());
        for name in raw.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            if let Some(shown) =
                whiteout::xattr_from_layer(OsStr::from_bytes(name), self.privileged)
            {
                out.extend_from_slice(shown.as_bytes());
                out.push(0);
            }
        }
        Ok(out)
    }

    /// Sets xattr `name` of `ino` (`flags`: `XATTR_CREATE`/`XATTR_REPLACE`).
    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
        self.check_writable()?;
        let name = &whiteout::xattr_to_layer(name, self.privileged);
        let _t = self.write_tree();
        let node = self.nodes.get(ino)?;
        self.copy_up(&node, true)?;
        let st = node.snapshot();
        let (path, follow) = self.xattr_path(&node, &st)?;
        sys::setxattr(&path, name, value, flags, follow)
    }

    /// Removes xattr `name` of `ino`.
    pub fn removexattr(&self, ino: u64, name: &OsStr) -> io::Result<()> {
        self.check_writable()?;
        let name = &whiteout::xattr_to_layer(name, self.privileged);
        let _t = self.write_tree();
        let node = self.nodes.get(ino)?;
        // Nothing to copy up for an attribute that is not there.
        {
            let st = node.snapshot();
            let (path, follow) = self.xattr_path(&node, &st)?;
            sys::getxattr(&path, name, follow)?;
        }
        self.copy_up(&node, true)?;
        let st = node.snapshot();
        let (path, follow) = self.xattr_path(&node, &st)?;
        sys::removexattr(&path, name, follow)
    }
}
