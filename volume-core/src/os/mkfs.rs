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
    /// Grows the filesystem on `device` to fill the device: online when it is mounted
    /// at `mount` (resize2fs, xfs_growfs), offline otherwise (e2fsck + resize2fs; xfs
    /// can only grow online).
    fn grow(&self, device: &Path, mount: Option<&Path>, fs: FsType) -> Result<()>;
}

/// Formats with mkfs.ext4 / mkfs.xfs / mkfs.btrfs.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFormatter;

impl Formatter for RealFormatter {
    fn format(&self, image: &Path, fs: FsType) -> Result<()> {
        match fs {
            // nodiscard: the file is fresh (sparse or preallocated), nothing to
            // discard, and it reads as zeros: with e2fsprogs 1.47 mke2fs can be told
            // so and marks the inode tables zeroed, so no lazy-init thread writes them
            // in the background while the volume is first used. Older mke2fs refuse
            // the option; they zero lazily.
            FsType::Ext4 => {
                let mkfs = |extended: &str| {
                    run(
                        "mkfs.ext4",
                        [
                            "-q".as_ref(),
                            "-F".as_ref(),
                            "-b".as_ref(),
                            "4096".as_ref(),
                            "-E".as_ref(),
                            extended.as_ref(),
                            image.as_os_str(),
                        ],
                    )
                };
                if mkfs("nodiscard,assume_storage_prezeroed=1").is_err() {
                    mkfs("nodiscard,lazy_itable_init=1,lazy_journal_init=1")?;
                }
            }
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
            )
            .map(drop)?,
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

    fn grow(&self, device: &Path, mount: Option<&Path>, fs: FsType) -> Result<()> {
        match (fs, mount) {
            (FsType::Ext4, Some(_)) => run("resize2fs", [device.as_os_str()])?,
            (FsType::Ext4, None) => {
                // resize2fs insists on a freshly checked filesystem when offline.
                let status = std::process::Command::new("e2fsck")
                    .args(["-f", "-p"])
                    .arg(device)
                    .stdin(std::process::Stdio::null())
                    .output()
                    .map_err(|e| crate::error::Error::io("run e2fsck", e))?;
                // 0: clean, 1: errors corrected; anything else needs a person.
                if !matches!(status.status.code(), Some(0) | Some(1)) {
                    return Err(crate::error::Error::Command {
                        program: "e2fsck".into(),
                        status: status.status.to_string(),
                        stderr: String::from_utf8_lossy(&status.stdout).trim().to_string(),
                    });
                }
                run("resize2fs", [device.as_os_str()])?
            }
            (FsType::Xfs, Some(m)) => run("xfs_growfs", [m.as_os_str()])?,
            (FsType::Xfs, None) => {
                return Err(crate::error::Error::InvalidArgument(
                    "xfs grows only while mounted".into(),
                ));
            }
        };
        Ok(())
    }
}
