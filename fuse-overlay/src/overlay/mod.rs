//! The overlay filesystem's core: read-only lower layers merged under one writable upper
//! layer, with no FUSE types (the FUSE adapter is [`crate::fuse`], the kernel overlayfs
//! back end [`crate::kernel`]; [`mount`] chooses between them).
//!
//! ```text
//!  layer:      upper (rw)       lower 0 (top)     lower 1          merged view
//!  a           a  (copied up)   a                 .                a     from upper
//!  b           .                b                 b                b     from lower 0
//!  c           c  (chr 0/0)     .                 c                -     whited out
//!  d/          d/               d/                d/               d/    merged:
//!    d/x         x              .                 .                  x   from upper
//!    d/y         .              y                 .                  y   from lower 0
//!    d/z         .              .                 z                  z   from lower 1
//!  e/          e/ (opaque)      e/                e/               e/    upper only:
//!    e/old       .              old               old                    (all hidden)
//!  f           .                f (chr 0/0)       f                -     whited out in
//!                                                                        a lower layer
//! ```
//!
//! (`.` = absent. An opaque directory carries `trusted.overlay.opaque=y`, or holds a
//! `.wh..wh..opq` file in OCI layers; a whiteout is a 0/0 character device, or a
//! `.wh.NAME` file in OCI layers.)
//!
//! - **Lookup** goes top-down: upper, then each lower layer in order. A whiteout (a
//!   0/0 character device `NAME` or an OCI `.wh.NAME` file) ends the search with
//!   "not found"; a non-directory ends it with that entry; directories found on the
//!   way are merged until an opaque one (xattr `*.overlay.opaque=y` or a
//!   `.wh..wh..opq` marker) or a non-directory. See [`whiteout`] for the formats.
//! - **Readdir** lists the upper directory first, then each merged lower directory,
//!   dropping names already seen or whited out, and never shows `.wh.*` names.
//! - **Copy-up** happens before any change to an entry that lives only in a lower
//!   layer: its parent directories are copied first (with their metadata), the file is
//!   built in the work directory (data by reflink when possible, else
//!   `copy_file_range`, holes kept; owner, mode, xattrs, times) and renamed into place.
//! - **Removal** of a name that a lower layer has leaves a whiteout; a directory
//!   created over a whiteout is opaque.
//! - **Rename** of a directory that has lower parts copies its whole merged subtree
//!   up, renames it in the upper layer and marks it opaque (kernel overlayfs without
//!   `redirect_dir`, and fuse-overlayfs, answer `EXDEV` instead).
//!
//! Inode numbers and the lookup-count contract are described in [`inode`].
//!
//! Concurrency: one reader-writer lock orders the namespace. Lookups, attribute reads,
//! directory reads and data I/O take it shared (data I/O does not take it at all once a
//! file is open); operations that change the namespace or copy up take it exclusively.

pub mod attr;
pub mod cli;
mod copyup;
mod dir;
mod file;
pub mod idmap;
pub mod inode;
mod lookup;
pub mod mount;
mod ops;
mod rename;
pub mod sys;
#[cfg(test)]
mod tests;
pub mod whiteout;
mod xattr;

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

pub use attr::{Attr, Caller, DirEntry, Entry, FileKind, SetAttr, SetTime, StatFs};
pub use file::Opened;
pub use inode::ROOT_INO;
pub use mount::{Backend, Error, Layers, MountGuard, MountOptions, Overlay};

use inode::{Ident, Idents, Node, NodeState, NodeTable, UPPER_LAYER};

/// Name of the overlay's private directory inside the work directory.
const WORK_SUBDIR: &str = "stowage-work";

/// The layers of one overlay and how long the kernel may cache what it is told.
#[derive(Debug, Clone)]
pub struct OverlayConfig {
    /// Read-only lower layers, top first.
    pub lowers: Vec<PathBuf>,
    /// Writable upper layer.
    pub upper: PathBuf,
    /// Work directory, on the upper layer's filesystem.
    pub work: PathBuf,
    /// Cache time for entries and attributes that live only in read-only layers.
    pub ttl_lower: Duration,
    /// Cache time for entries and attributes in the upper layer.
    pub ttl_upper: Duration,
    /// A read-only overlay: `upper` is the top read-only layer (never written, opened
    /// read-only), `work` is unused, and every change is refused with EROFS.
    pub read_only: bool,
    /// Skip the fsync that makes each copy-up durable before its rename (kernel
    /// overlayfs's `volatile`): faster, but after a crash a copied-up file may be
    /// empty or partial. For upper layers thrown away after a crash.
    pub volatile: bool,
    /// Owners as stored in the layers → as the mount shows them (users).
    pub uid_map: idmap::IdMap,
    /// The same for groups.
    pub gid_map: idmap::IdMap,
}

impl OverlayConfig {
    /// A configuration with the default cache times (10 min lower, 1 s upper).
    pub fn new(lowers: Vec<PathBuf>, upper: PathBuf, work: PathBuf) -> Self {
        OverlayConfig {
            lowers,
            upper,
            work,
            ttl_lower: Duration::from_secs(600),
            ttl_upper: Duration::from_secs(1),
            read_only: false,
            volatile: false,
            uid_map: idmap::IdMap::default(),
            gid_map: idmap::IdMap::default(),
        }
    }

    /// A read-only overlay of `layers` (top first, at least one): nothing is written
    /// anywhere, every change is EROFS.
    pub fn read_only(mut layers: Vec<PathBuf>) -> Self {
        let top = if layers.is_empty() {
            PathBuf::new()
        } else {
            layers.remove(0)
        };
        let mut c = OverlayConfig::new(layers, top, PathBuf::new());
        c.ttl_upper = c.ttl_lower;
        c.read_only = true;
        c
    }
}

#[derive(Debug)]
pub(crate) struct LayerRoot {
    pub path: PathBuf,
}

/// The overlay core. All methods are safe to call from several threads.
#[derive(Debug)]
pub struct OverlayFs {
    lowers: Vec<LayerRoot>,
    upper: LayerRoot,
    work: PathBuf,
    nodes: NodeTable,
    idents: Idents,
    tree: RwLock<()>,
    handles: file::Handles,
    dirs: dir::DirHandles,
    next_tmp: AtomicU64,
    /// This process's id, in the work directory's scratch names.
    pid: u32,
    read_only: bool,
    /// Whether copy-up still tries reflinks (cleared when the upper filesystem refuses).
    reflink: std::sync::atomic::AtomicBool,
    privileged: bool,
    ttl_lower: Duration,
    ttl_upper: Duration,
    volatile: bool,
    uid_map: idmap::IdMap,
    gid_map: idmap::IdMap,
}

pub(crate) fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl OverlayFs {
    /// Opens an overlay over existing directories. The work directory must be on the
    /// upper layer's filesystem; the overlay keeps its scratch files in a subdirectory
    /// of it, emptied here.
    pub fn new(config: OverlayConfig) -> io::Result<Self> {
        // Errors name the directory (the errno kind is kept for callers).
        let check_dir = |p: &Path| -> io::Result<PathBuf> {
            let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", p.display()));
            let c = std::fs::canonicalize(p).map_err(named)?;
            if !std::fs::metadata(&c).map_err(named)?.is_dir() {
                return Err(named(errno(libc::ENOTDIR)));
            }
            Ok(c)
        };
        if config.lowers.is_empty() && !config.read_only {
            return Err(errno(libc::EINVAL));
        }
        let lowers = config
            .lowers
            .iter()
            .map(|p| check_dir(p).map(|path| LayerRoot { path }))
            .collect::<io::Result<Vec<_>>>()?;
        let upper = LayerRoot {
            path: check_dir(&config.upper)?,
        };
        let work = if config.read_only {
            PathBuf::new()
        } else {
            let work_root = check_dir(&config.work)?;
            if std::fs::metadata(&work_root)?.dev() != std::fs::metadata(&upper.path)?.dev() {
                return Err(errno(libc::EXDEV));
            }
            let work = work_root.join(WORK_SUBDIR);
            match std::fs::remove_dir_all(&work) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            std::fs::create_dir(&work)?;
            work
        };

        let upper_md = std::fs::symlink_metadata(&upper.path)?;
        let idents = Idents::new();
        idents.alias((UPPER_LAYER, upper_md.ino()), ROOT_INO);
        let mut dir_lowers = Vec::new();
        for (i, l) in lowers.iter().enumerate() {
            dir_lowers.push(i);
            if whiteout::is_opaque_dir(&l.path) {
                break;
            }
        }
        let root = Node::new(
            ROOT_INO,
            FileKind::Dir,
            NodeState {
                parent: None,
                name: Default::default(),
                upper: true,
                lower: dir_lowers.first().copied(),
                dir_lowers,
                detached: None,
                lower_hardlink: false,
            },
        );
        Ok(OverlayFs {
            lowers,
            upper,
            work,
            nodes: NodeTable::new(root),
            idents,
            tree: RwLock::new(()),
            handles: file::Handles::default(),
            dirs: dir::DirHandles::default(),
            next_tmp: AtomicU64::new(0),
            pid: std::process::id(),
            read_only: config.read_only,
            reflink: std::sync::atomic::AtomicBool::new(true),
            privileged: nix::unistd::geteuid().is_root(),
            ttl_lower: config.ttl_lower,
            ttl_upper: config.ttl_upper,
            volatile: config.volatile,
            uid_map: config.uid_map,
            gid_map: config.gid_map,
        })
    }

    /// Whether the overlay refuses every change (no upper layer).
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// EROFS for a read-only overlay.
    pub(crate) fn check_writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(errno(libc::EROFS))
        } else {
            Ok(())
        }
    }

    /// Whether the overlay runs with privilege (writes kernel-style whiteouts, trusted
    /// xattrs, and owners other than its own).
    pub fn privileged(&self) -> bool {
        self.privileged
    }

    /// Number of inodes currently known to the kernel (plus the root).
    pub fn live_inodes(&self) -> usize {
        self.nodes.len()
    }

    fn read_tree(&self) -> RwLockReadGuard<'_, ()> {
        self.tree.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_tree(&self) -> RwLockWriteGuard<'_, ()> {
        self.tree.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh name in the work directory.
    fn tmp_path(&self) -> PathBuf {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        self.work.join(format!("#{}.{n}", self.pid))
    }

    /// `root/rel`, without a trailing slash for the root itself.
    fn at(root: &Path, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        }
    }

    fn upper_at(&self, rel: &Path) -> PathBuf {
        Self::at(&self.upper.path, rel)
    }

    fn lower_at(&self, layer: usize, rel: &Path) -> PathBuf {
        Self::at(&self.lowers[layer].path, rel)
    }

    /// The node's path relative to the layer roots; `ENOENT` once detached.
    fn rel_path(&self, node: &Arc<Node>) -> io::Result<PathBuf> {
        let mut names = Vec::new();
        let mut cur = node.clone();
        loop {
            if cur.ino == ROOT_INO {
                break;
            }
            let (parent, name) = {
                let st = cur.lock();
                if st.detached.is_some() {
                    return Err(errno(libc::ENOENT));
                }
                (st.parent.clone(), st.name.clone())
            };
            let Some(parent) = parent else {
                return Err(errno(libc::ENOENT));
            };
            names.push(name);
            cur = parent;
        }
        let mut p = PathBuf::new();
        for n in names.iter().rev() {
            p.push(n);
        }
        Ok(p)
    }

    /// The path of the file that currently backs `node` (a `/proc/self/fd` link for a
    /// detached inode).
    fn backing_path(&self, node: &Arc<Node>, st: &NodeState) -> io::Result<PathBuf> {
        if let Some(fd) = &st.detached {
            return Ok(proc_fd_path(fd));
        }
        let rel = self.rel_path(node)?;
        if st.upper {
            Ok(self.upper_at(&rel))
        } else if let Some(l) = st.lower {
            Ok(self.lower_at(l, &rel))
        } else {
            Err(errno(libc::ENOENT))
        }
    }

    fn ident_of_upper(md: &std::fs::Metadata) -> Ident {
        (UPPER_LAYER, md.ino())
    }

    fn ident_of_lower(layer: usize, md: &std::fs::Metadata) -> Ident {
        (layer as u32 + 1, md.ino())
    }

    /// Attributes for `node` from its backing metadata (merged directories report one
    /// link, as kernel overlayfs does).
    /// Whether the caller id `uid` (as the mount shows ids) is root in the layers: the
    /// one the kernel lets keep setuid bits on a truncation or write.
    pub fn is_root(&self, uid: u32) -> bool {
        self.uid_map.stored(uid) == Some(0)
    }

    fn attr_of(&self, ino: u64, md: &std::fs::Metadata, st: &NodeState) -> Attr {
        let mut a = Attr::from_metadata(ino, md);
        a.uid = self.uid_map.shown(a.uid);
        a.gid = self.gid_map.shown(a.gid);
        if a.kind == FileKind::Dir && st.is_merged_dir() {
            a.nlink = 1;
        }
        a
    }

    fn ttls(&self, st: &NodeState) -> (Duration, Duration) {
        if st.upper || st.detached.is_some() {
            (self.ttl_upper, self.ttl_upper)
        } else if st.lower_hardlink {
            (Duration::ZERO, Duration::ZERO)
        } else {
            (self.ttl_lower, self.ttl_lower)
        }
    }

    fn entry_of(&self, node: &Node, md: &std::fs::Metadata, st: &NodeState) -> Entry {
        let (entry_ttl, attr_ttl) = self.ttls(st);
        Entry {
            attr: self.attr_of(node.ino, md, st),
            entry_ttl,
            attr_ttl,
        }
    }

    /// The kernel dropped `nlookup` references to `ino` (see [`inode`] for the contract).
    pub fn forget(&self, ino: u64, nlookup: u64) {
        self.nodes.forget(ino, nlookup);
    }
}

pub(crate) fn proc_fd_path(f: &File) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

pub(crate) fn name_ok(name: &OsStr) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.as_encoded_bytes().contains(&b'/') {
        return Err(errno(libc::EINVAL));
    }
    if name.len() > 255 {
        return Err(errno(libc::ENAMETOOLONG));
    }
    Ok(())
}
