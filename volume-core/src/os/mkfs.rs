//! Making filesystems on image files.

use std::fmt::Debug;
use std::path::Path;

use crate::error::Result;
use crate::model::FsType;
use crate::os::command::run;

/// Formats image files.
pub trait Formatter: Send + Sync + Debug {
    /// Makes a filesystem of type `fs` on the (regular) file `image`, with 4 KiB blocks
    /// and sectors so it mounts on a loop device with 4 KiB logical blocks.
    fn format(&self, image: &Path, fs: FsType) -> Result<()>;
    /// Makes a btrfs filesystem on `image` (the embedded pool).
    fn format_btrfs(&self, image: &Path, label: &str) -> Result<()>;
}

/// Formats with mkfs.ext4 / mkfs.xfs / mkfs.btrfs.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFormatter;

impl Formatter for RealFormatter {
    fn format(&self, image: &Path, fs: FsType) -> Result<()> {
        match fs {
            // nodiscard: the file is fresh and sparse, nothing to discard.
            FsType::Ext4 => run(
                "mkfs.ext4",
                [
                    "-q".as_ref(),
                    "-F".as_ref(),
                    "-b".as_ref(),
                    "4096".as_ref(),
                    "-E".as_ref(),
                    "nodiscard,lazy_itable_init=1,lazy_journal_init=1".as_ref(),
                    image.as_os_str(),
                ],
            )?,
            FsType::Xfs => run(
                "mkfs.xfs",
                [
                    "-q".as_ref(),
                    "-f".as_ref(),
                    "-K".as_ref(),
                    "-s".as_ref(),
                    "size=4096".as_ref(),
                    image.as_os_str(),
                ],
            )?,
        };
        Ok(())
    }

    fn format_btrfs(&self, image: &Path, label: &str) -> Result<()> {
        run(
            "mkfs.btrfs",
            [
                "-q".as_ref(),
                "-f".as_ref(),
                "-L".as_ref(),
                label.as_ref(),
                image.as_os_str(),
            ],
        )?;
        Ok(())
    }
}
