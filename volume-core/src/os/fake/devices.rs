//! The fake's loop devices, mkfs and tree copies.

use super::*;

impl LoopControl for FakeHost {
    fn attach(&self, file: &Path, direct_io: bool, _read_only: bool) -> io::Result<LoopInfo> {
        self.enter("attach", &[&file.display()])?;
        let mut st = self.state();
        let n = st.next_loop;
        st.next_loop += 1;
        let info = LoopInfo {
            device: PathBuf::from(format!("/dev/loop{n}")),
            backing_file: file.canonicalize().unwrap_or_else(|_| file.to_path_buf()),
            direct_io,
            file_id: std::fs::metadata(file).ok().map(|m| FileId::of(&m)),
        };
        st.loops.push(info.clone());
        Ok(info)
    }

    fn detach(&self, device: &Path) -> io::Result<()> {
        self.enter("detach", &[&device.display()])?;
        self.state().loops.retain(|l| l.device != device);
        Ok(())
    }

    fn refresh_capacity(&self, device: &Path) -> io::Result<()> {
        self.enter("refresh_capacity", &[&device.display()])
    }

    fn list(&self) -> io::Result<Vec<LoopInfo>> {
        Ok(self.state().loops.clone())
    }
}

impl Formatter for FakeHost {
    fn format(&self, image: &Path, fs: FsType) -> Result<()> {
        self.enter("format", &[&image.display(), &fs])
            .map_err(|e| to_err("format", e))
    }

    fn format_btrfs(&self, image: &Path, label: &str) -> Result<()> {
        self.enter("format_btrfs", &[&image.display(), &label])
            .map_err(|e| to_err("format_btrfs", e))
    }

    fn grow(&self, device: &Path, mount: Option<&Path>, fs: FsType) -> Result<()> {
        let how = if mount.is_some() { "online" } else { "offline" };
        self.enter("grow", &[&device.display(), &how, &fs])
            .map_err(|e| to_err("grow", e))
    }
}

impl TreeCopy for FakeHost {
    /// The fake's copies are plain copies, never atomic.
    fn makes_reflinks(&self, _dir: &Path) -> bool {
        false
    }

    fn copy_tree(&self, source: &Path, dest: &Path) -> Result<()> {
        self.enter("copy_tree", &[&source.display(), &dest.display()])
            .map_err(|e| to_err("copy_tree", e))?;
        if std::fs::symlink_metadata(source)
            .map_err(|e| to_err("copy_tree", e))?
            .is_file()
        {
            return std::fs::copy(source, dest)
                .map(drop)
                .map_err(|e| to_err("copy_tree", e));
        }
        copy_dir(source, dest).map_err(|e| to_err("copy_tree", e))
    }
}

/// A plain recursive copy of regular files and directories (enough for the fake).
pub(super) fn copy_dir(source: &Path, dest: &Path) -> io::Result<()> {
    std::fs::create_dir(dest)?;
    for entry in std::fs::read_dir(source)? {
        let entry = entry?;
        let to = dest.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &to)?;
        } else {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}
