//! Overlay inodes: numbering, the table of inodes the kernel knows, and the lookup-count
//! contract.
//!
//! # Numbering
//!
//! An overlay inode number stands for one *file identity*, written `(layer, st_ino)`
//! where `layer` is 0 for the upper layer and `i + 1` for lower layer `i`. The
//! [`Idents`] map gives each identity a number the first time it is seen (by `lookup`
//! or by `readdir`, so both report the same number) and never forgets it while the
//! mount lives: a name looked up again after the kernel forgot it gets the same number.
//! Copy-up *aliases* the new upper identity to the number of the lower one, so a file
//! keeps its inode number when it is first modified. The identity of a directory is
//! that of its topmost layer. Two consequences, both deliberate:
//!
//! - hard links inside one layer share a number (and an inode in the kernel);
//! - copying up one name of a *lower* hard link breaks the link (as kernel overlayfs
//!   without `index=on` does): the lower identity is unmapped, so the other names get a
//!   new number when next looked up. Such entries are cached for 0 s so that lookup
//!   happens promptly.
//!
//! When an upper file loses its last link its identity is unmapped too, so a new file
//! that the underlying filesystem gives the same `st_ino` gets a new overlay number.
//!
//! # Lookup counts
//!
//! Every reply that hands the kernel an inode — `lookup`, `create`, `mkdir`, `mknod`,
//! `symlink`, `link` — counts one lookup on it; the core does the counting when it
//! returns the [`Entry`](super::Entry), so an adapter that fails to deliver an entry
//! must call [`forget`](super::OverlayFs::forget) with 1 for it. `forget(ino, n)`
//! subtracts `n`; at zero the inode leaves the table (its number stays reserved, see
//! above). The root is never forgotten. Operations on a number that is not in the
//! table answer `ESTALE`. A node that left the table may live on as the parent of live
//! nodes or inside open handles; that is fine, it is only no longer reachable by number.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::attr::FileKind;

/// The root's inode number (FUSE's `FUSE_ROOT_ID`).
pub const ROOT_INO: u64 = 1;

/// Layer id of the upper layer in an identity; lower layer `i` is `i + 1`.
pub(crate) const UPPER_LAYER: u32 = 0;

/// `(layer, st_ino)`.
pub(crate) type Ident = (u32, u64);

/// Where an inode's name lives and which layers back it.
#[derive(Debug, Clone)]
pub(crate) struct NodeState {
    /// Parent directory; `None` for the root and for detached inodes.
    pub parent: Option<Arc<Node>>,
    /// Name in the parent (last name it was looked up by, for hard links).
    pub name: OsString,
    /// Exists in the upper layer at its path.
    pub upper: bool,
    /// Topmost lower layer that has it (for a directory: its first merged layer).
    pub lower: Option<usize>,
    /// Directories: the lower layers merged below it, top first (empty when opaque).
    pub dir_lowers: Vec<usize>,
    /// Set once the name is gone (unlinked, replaced, removed) while the kernel still
    /// holds the inode: an `O_PATH` descriptor of the backing file.
    pub detached: Option<Arc<File>>,
    /// A lower file with several hard links (cached for 0 s, see the module docs).
    pub lower_hardlink: bool,
}

impl NodeState {
    /// Whether this directory is merged from more than one layer.
    pub fn is_merged_dir(&self) -> bool {
        usize::from(self.upper) + self.dir_lowers.len() > 1
    }
}

/// One overlay inode.
#[derive(Debug)]
pub(crate) struct Node {
    pub ino: u64,
    pub kind: FileKind,
    lookups: AtomicU64,
    pub state: Mutex<NodeState>,
}

impl Node {
    pub fn new(ino: u64, kind: FileKind, state: NodeState) -> Self {
        Node {
            ino,
            kind,
            lookups: AtomicU64::new(0),
            state: Mutex::new(state),
        }
    }

    /// A copy of the state (the lock is held only for the copy).
    pub fn snapshot(&self) -> NodeState {
        self.lock().clone()
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
struct IdentMap {
    map: HashMap<Ident, u64>,
    next: u64,
}

/// Identity → inode number, for the life of the mount.
#[derive(Debug)]
pub(crate) struct Idents {
    inner: Mutex<IdentMap>,
}

impl Idents {
    pub fn new() -> Self {
        Idents {
            inner: Mutex::new(IdentMap {
                map: HashMap::new(),
                next: ROOT_INO + 1,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdentMap> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The number of an identity, allocating one the first time.
    pub fn ino_for(&self, ident: Ident) -> u64 {
        let mut m = self.lock();
        if let Some(ino) = m.map.get(&ident) {
            return *ino;
        }
        let ino = m.next;
        m.next += 1;
        m.map.insert(ident, ino);
        ino
    }

    /// Makes `ident` stand for `ino` (copy-up, the root).
    pub fn alias(&self, ident: Ident, ino: u64) {
        self.lock().map.insert(ident, ino);
    }

    /// Forgets an identity that no longer names a file here.
    pub fn unmap(&self, ident: Ident) {
        self.lock().map.remove(&ident);
    }
}

/// The inodes the kernel holds (lookup count > 0), plus the root.
#[derive(Debug)]
pub(crate) struct NodeTable {
    nodes: RwLock<HashMap<u64, Arc<Node>>>,
}

impl NodeTable {
    pub fn new(root: Node) -> Self {
        let mut map = HashMap::new();
        map.insert(root.ino, Arc::new(root));
        NodeTable {
            nodes: RwLock::new(map),
        }
    }

    /// The live inode `ino`, or `ESTALE`.
    pub fn get(&self, ino: u64) -> io::Result<Arc<Node>> {
        self.try_get(ino)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))
    }

    pub fn try_get(&self, ino: u64) -> Option<Arc<Node>> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ino)
            .cloned()
    }

    /// The inode `ino` with `state` applied, created if it is not live. With `count`
    /// it gains one lookup (and joins the table); without, a node that is not live is
    /// returned detached from the table (a transient, for copy-up walks).
    pub fn upsert(&self, ino: u64, kind: FileKind, state: NodeState, count: bool) -> Arc<Node> {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        let node = match nodes.get(&ino) {
            Some(node) if node.kind == kind => {
                *node.lock() = state;
                node.clone()
            }
            _ if !count => return Arc::new(Node::new(ino, kind, state)),
            _ => {
                // A live inode of another kind under this number cannot be the same file:
                // replace it (the kernel drops the old one when it sees the kind change).
                let node = Arc::new(Node::new(ino, kind, state));
                nodes.insert(ino, node.clone());
                node
            }
        };
        if count {
            node.lookups.fetch_add(1, Ordering::Relaxed);
        }
        node
    }

    /// Subtracts `n` lookups; the inode leaves the table at zero (never the root).
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(node) = nodes.get(&ino) {
            let left = node.lookups().saturating_sub(n);
            node.lookups.store(left, Ordering::Relaxed);
            if left == 0 {
                nodes.remove(&ino);
            }
        }
    }

    /// Number of live inodes (tests).
    pub fn len(&self) -> usize {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> NodeState {
        NodeState {
            parent: None,
            name: OsString::from("x"),
            upper: true,
            lower: None,
            dir_lowers: Vec::new(),
            detached: None,
            lower_hardlink: false,
        }
    }

    #[test]
    fn numbers_are_stable_and_aliases_share_them() {
        let ids = Idents::new();
        let a = ids.ino_for((1, 100));
        assert_eq!(a, 2);
        assert_eq!(ids.ino_for((1, 100)), a);
        let b = ids.ino_for((2, 100));
        assert_ne!(a, b);
        ids.alias((UPPER_LAYER, 7), a);
        assert_eq!(ids.ino_for((UPPER_LAYER, 7)), a);
        ids.unmap((1, 100));
        assert_ne!(ids.ino_for((1, 100)), a);
    }

    #[test]
    fn lookup_counts_keep_nodes_until_forgotten() {
        let table = NodeTable::new(Node::new(ROOT_INO, FileKind::Dir, state()));
        table.upsert(5, FileKind::File, state(), true);
        table.upsert(5, FileKind::File, state(), true);
        assert_eq!(table.len(), 2);
        table.forget(5, 1);
        assert!(table.try_get(5).is_some());
        table.forget(5, 1);
        assert!(table.try_get(5).is_none());
        assert_eq!(table.get(5).unwrap_err().raw_os_error(), Some(libc::ESTALE));
        table.forget(ROOT_INO, 100);
        assert!(table.try_get(ROOT_INO).is_some());
    }
}
