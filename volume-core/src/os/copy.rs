//! Copying a volume's tree where the pool cannot snapshot (plain-directory pools, host
//! images), and whether a filesystem can make that copy a reflink.

use std::fmt::Debug;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::os::command::run;

/// Copies directory trees.
pub trait TreeCopy: Send + Sync + Debug {
    /// Copies `source` (a directory tree or one file) to the new path `dest`,
    /// preserving owners, modes, times, links and xattrs, keeping holes in sparse
    /// files and sharing extents where the filesystem can reflink.
    fn copy_tree(&self, source: &Path, dest: &Path) -> Result<()>;
    /// Whether the filesystem of directory `dir` makes reflinks (a copy in one atomic
    /// step).
    fn makes_reflinks(&self, dir: &Path) -> bool;
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

    /// Tried once on two scratch files there.
    fn makes_reflinks(&self, dir: &Path) -> bool {
        let probe = || -> std::io::Result<()> {
            let source = Scratch::new(dir)?;
            std::fs::write(&source.0, [0u8; 4096])?;
            let dest = Scratch::new(dir)?;
            let s = std::fs::File::open(&source.0)?;
            let d = OpenOptions::new().write(true).open(&dest.0)?;
            crate::sys::ficlone(std::os::fd::AsFd::as_fd(&d), std::os::fd::AsFd::as_fd(&s))
        };
        probe().is_ok()
    }
}

/// A scratch file, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join(format!(".probe-{}", crate::ids::new_id("")));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
