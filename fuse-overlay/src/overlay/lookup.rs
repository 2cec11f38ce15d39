//! Top-down name resolution, `lookup`, `getattr` and `readlink`.

use std::ffi::OsStr;
use std::fs::Metadata;
use std::io;
use std::path::Path;
use std::sync::Arc;

use super::attr::{Attr, Entry, FileKind};
use super::inode::{Ident, Node, NodeState};
use super::whiteout;
use super::{OverlayFs, errno};

/// What a name resolves to in the merged view.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub kind: FileKind,
    /// Exists in the upper layer.
    pub upper: bool,
    /// Topmost lower layer holding it (directories: the first merged one).
    pub lower: Option<usize>,
    /// Directories: merged lower layers, top first.
    pub dir_lowers: Vec<usize>,
    /// Metadata of the topmost layer's file.
    pub md: Metadata,
    /// Identity of the topmost layer's file.
    pub ident: Ident,
}

fn lstat(path: &Path) -> io::Result<Option<Metadata>> {
    match std::fs::symlink_metadata(path) {
        Ok(md) => Ok(Some(md)),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ENAMETOOLONG)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// What resolving a name found, for callers that care why nothing is there.
// Returned and matched at once, never stored: boxing `Found` would only add an
// allocation to every lookup.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Resolution {
    /// An entry of the merged view.
    Found(Resolved),
    /// Nothing, and no whiteout in the upper layer.
    Absent,
    /// A whiteout in the upper layer hides the name (a new entry there replaces it).
    WhitedOutInUpper,
}

impl OverlayFs {
    /// Resolves `name` in the directory described by `parent` (at `prel`).
    pub(crate) fn resolve(
        &self,
        parent: &NodeState,
        prel: &Path,
        name: &OsStr,
    ) -> io::Result<Option<Resolved>> {
        Ok(match self.resolve_detailed(parent, prel, name)? {
            Resolution::Found(r) => Some(r),
            Resolution::Absent | Resolution::WhitedOutInUpper => None,
        })
    }

    /// [`Self::resolve`], telling an upper whiteout apart from nothing. A `.wh.` file
    /// is looked for only where a layer below could hold the name (it hides nothing
    /// else, so a miss in the last layer costs one `lstat`).
    pub(crate) fn resolve_detailed(
        &self,
        parent: &NodeState,
        prel: &Path,
        name: &OsStr,
    ) -> io::Result<Resolution> {
        if whiteout::is_wh_name(name) {
            return Ok(Resolution::Absent);
        }
        let rel = prel.join(name);
        let mut found: Option<Resolved> = None;
        if parent.upper {
            match lstat(&self.upper_at(&rel))? {
                Some(md) if whiteout::is_whiteout(&md) => return Ok(Resolution::WhitedOutInUpper),
                Some(md) => {
                    let kind = FileKind::from_mode(std::os::unix::fs::MetadataExt::mode(&md));
                    let opaque =
                        kind == FileKind::Dir && whiteout::is_opaque_dir(&self.upper_at(&rel));
                    let r = Resolved {
                        kind,
                        upper: true,
                        lower: None,
                        dir_lowers: Vec::new(),
                        ident: Self::ident_of_upper(&md),
                        md,
                    };
                    if kind != FileKind::Dir || opaque {
                        return Ok(Resolution::Found(r));
                    }
                    found = Some(r);
                }
                None => {
                    if !parent.dir_lowers.is_empty()
                        && whiteout::has_wh_file(&self.upper_at(prel), name)
                    {
                        return Ok(Resolution::WhitedOutInUpper);
                    }
                }
            }
        }
        let last = parent.dir_lowers.last().copied();
        for &layer in &parent.dir_lowers {
            let path = self.lower_at(layer, &rel);
            match lstat(&path)? {
                Some(md) if whiteout::is_whiteout(&md) => break,
                Some(md) => {
                    let kind = FileKind::from_mode(std::os::unix::fs::MetadataExt::mode(&md));
                    match &mut found {
                        None => {
                            let is_dir = kind == FileKind::Dir;
                            found = Some(Resolved {
                                kind,
                                upper: false,
                                lower: Some(layer),
                                dir_lowers: if is_dir { vec![layer] } else { Vec::new() },
                                ident: Self::ident_of_lower(layer, &md),
                                md,
                            });
                            if !is_dir || whiteout::is_opaque_dir(&path) {
                                break;
                            }
                        }
                        Some(r) => {
                            // Below a directory only directories merge; anything else ends it.
                            if kind != FileKind::Dir {
                                break;
                            }
                            r.lower.get_or_insert(layer);
                            r.dir_lowers.push(layer);
                            if whiteout::is_opaque_dir(&path) {
                                break;
                            }
                        }
                    }
                }
                None => {
                    if Some(layer) != last
                        && whiteout::has_wh_file(&self.lower_at(layer, prel), name)
                    {
                        break;
                    }
                }
            }
        }
        Ok(found.map_or(Resolution::Absent, Resolution::Found))
    }

    /// Whether some lower layer below `parent` has a (not whited-out) entry `name`:
    /// removing or renaming away the upper entry must then leave a whiteout.
    pub(crate) fn lower_has(
        &self,
        parent: &NodeState,
        prel: &Path,
        name: &OsStr,
    ) -> io::Result<bool> {
        let rel = prel.join(name);
        for &layer in &parent.dir_lowers {
            match lstat(&self.lower_at(layer, &rel))? {
                Some(md) if whiteout::is_whiteout(&md) => return Ok(false),
                Some(_) => return Ok(true),
                None => {
                    if whiteout::has_wh_file(&self.lower_at(layer, prel), name) {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(false)
    }

    /// The state a node gets from a resolution under `parent`.
    pub(crate) fn state_from(parent: &Arc<Node>, name: &OsStr, r: &Resolved) -> NodeState {
        NodeState {
            parent: Some(parent.clone()),
            name: name.to_os_string(),
            upper: r.upper,
            lower: r.lower,
            dir_lowers: r.dir_lowers.clone(),
            detached: None,
            lower_hardlink: !r.upper
                && r.kind != FileKind::Dir
                && std::os::unix::fs::MetadataExt::nlink(&r.md) > 1,
        }
    }

    /// The node for a resolved entry (created or refreshed), counting a lookup if asked.
    pub(crate) fn node_for(
        &self,
        parent: &Arc<Node>,
        name: &OsStr,
        r: &Resolved,
        count: bool,
    ) -> Arc<Node> {
        let ino = self.idents.ino_for(r.ident);
        self.nodes
            .upsert(ino, r.kind, Self::state_from(parent, name, r), count)
    }

    /// A live directory node, its state and its relative path.
    pub(crate) fn dir_node(
        &self,
        ino: u64,
    ) -> io::Result<(Arc<Node>, NodeState, std::path::PathBuf)> {
        let node = self.nodes.get(ino)?;
        if node.kind != FileKind::Dir {
            return Err(errno(libc::ENOTDIR));
        }
        let st = node.snapshot();
        let rel = self.rel_path(&node)?;
        Ok((node, st, rel))
    }

    /// Looks `name` up in directory `parent`; counts one lookup on the result.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> io::Result<Entry> {
        let _t = self.read_tree();
        let (pnode, pst, prel) = self.dir_node(parent)?;
        if name.len() > 255 {
            return Err(errno(libc::ENAMETOOLONG));
        }
        let r = self
            .resolve(&pst, &prel, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        let node = self.node_for(&pnode, name, &r, true);
        let st = node.snapshot();
        Ok(self.entry_of(&node, &r.md, &st))
    }

    /// Metadata of the file backing `node` now.
    pub(crate) fn node_metadata(&self, node: &Arc<Node>, st: &NodeState) -> io::Result<Metadata> {
        if let Some(f) = &st.detached {
            return f.metadata();
        }
        std::fs::symlink_metadata(self.backing_path(node, st)?)
    }

    /// Attributes of `ino` and how long they may be cached.
    pub fn getattr(&self, ino: u64) -> io::Result<(Attr, std::time::Duration)> {
        let _t = self.read_tree();
        let node = self.nodes.get(ino)?;
        let st = node.snapshot();
        let md = self.node_metadata(&node, &st)?;
        Ok((self.attr_of(ino, &md, &st), self.ttls(&st).1))
    }

    /// Target of the symlink `ino`.
    pub fn readlink(&self, ino: u64) -> io::Result<std::path::PathBuf> {
        let _t = self.read_tree();
        let node = self.nodes.get(ino)?;
        if node.kind != FileKind::Symlink {
            return Err(errno(libc::EINVAL));
        }
        let st = node.snapshot();
        if let Some(f) = &st.detached {
            // readlinkat(fd, "") works on an O_PATH descriptor of a symlink.
            return nix::fcntl::readlinkat(f, "")
                .map(std::path::PathBuf::from)
                .map_err(io::Error::from);
        }
        std::fs::read_link(self.backing_path(&node, &st)?)
    }
}
