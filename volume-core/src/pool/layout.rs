//! Which layout a volume's data gets: the one asked for when the pool offers it, else
//! the fastest the pool offers for its kind; what a layout has room for.

use super::*;

impl Pool {
    /// Bytes available for `wanted` more of a volume of `layout`: on the host for a
    /// host image, else as [`Self::available_for`]. NO_SPACE if they are not there.
    pub fn available_for_layout(&self, layout: Layout, wanted: u64, what: &str) -> Result<u64> {
        if layout != Layout::HostImage {
            return self.available_for(wanted, what);
        }
        let available = self.host_usage()?.map(|u| u.available).unwrap_or(0);
        if wanted > available {
            return Err(Error::NoSpace(format!(
                "{what}: {wanted} bytes, {available} available on the host filesystem \
                 (keeping {HOST_RESERVE} bytes free)"
            )));
        }
        Ok(available)
    }

    /// The layout of volume `rec` (recorded, or what the release that made it used).
    pub fn layout_of(&self, rec: &VolumeRecord) -> Layout {
        rec.layout.unwrap_or_else(|| {
            Layout::before_layouts(rec.kind, matches!(self.backend, PoolBackend::Btrfs { .. }))
        })
    }

    /// The layout a new volume gets: `asked` when the pool offers it (INVALID_ARGUMENT
    /// if not), else [`Self::layout_for_new`]'s choice.
    pub fn choose_layout(
        &self,
        kind: VolumeKind,
        asked: Option<Layout>,
        replicated: bool,
        compression: bool,
    ) -> Result<Layout> {
        let btrfs = matches!(self.backend, PoolBackend::Btrfs { .. });
        let Some(l) = asked else {
            return Ok(self.layout_for_new(kind, replicated, compression));
        };
        let offered = match l {
            Layout::BtrfsNocow => btrfs && !compression,
            Layout::BtrfsSubvolume => btrfs,
            Layout::Directory => !btrfs,
            Layout::HostImage => self.images.is_some(),
            Layout::PoolImage | Layout::Overlay => true,
        };
        if !offered {
            return Err(Error::InvalidArgument(format!(
                "layout {l} is not offered by this node's pool{}",
                if compression { " with compression" } else { "" }
            )));
        }
        Ok(l)
    }

    /// The layout a new volume of `kind` gets: a loop volume's image on the host's
    /// filesystem beside an embedded pool unless it is `replicated` (btrfs send ships
    /// pool images); a directory nodatacow on btrfs unless it wants `compression`.
    pub(super) fn layout_for_new(
        &self,
        kind: VolumeKind,
        replicated: bool,
        compression: bool,
    ) -> Layout {
        let btrfs = matches!(self.backend, PoolBackend::Btrfs { .. });
        match kind {
            VolumeKind::Loop if self.images.is_some() && !replicated => self.loop_layout,
            VolumeKind::Loop => Layout::PoolImage,
            VolumeKind::Dir if !btrfs => Layout::Directory,
            VolumeKind::Dir if compression => Layout::BtrfsSubvolume,
            VolumeKind::Dir => Layout::BtrfsNocow,
            VolumeKind::Image => Layout::Overlay,
        }
    }
}
