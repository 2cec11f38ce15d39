//! Copying a volume's tree where the pool cannot snapshot (plain-directory pools).

use std::fmt::Debug;
use std::path::Path;

use crate::error::Result;
use crate::os::command::run;

/// Copies directory trees.
pub trait TreeCopy: Send + Sync + Debug {
    /// Copies `source` (a directory tree or one file) to the new path `dest`, preserving owners, modes, times, links
    /// and xattrs, keeping holes in sparse files and sharing extents where the
    /// filesystem can reflink.
    fn copy_tree(&self, source: &Path, dest: &Path) -> Result<()>;
}

/// Copies with `cp -a --reflink=auto --sparse=always`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealTreeCopy;

impl TreeCopy for RealTreeCopy {
    fn copy_tree(&self, source: &Path, dest: &Path) -> Result<()> {
        run(
            "cp",
            [
                "-a".as_ref(),
                "--reflink=auto".as_ref(),
                "--sparse=always".as_ref(),
                "--no-target-directory".as_ref(),
                source.as_os_str(),
                dest.as_os_str(),
            ],
        )?;
        Ok(())
    }
}
