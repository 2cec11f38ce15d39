//! The fake's mount table and mount namespaces (and its reboot).

use super::*;

impl Mounter for FakeHost {
    fn mount(
        &self,
        device: &Path,
        target: &MountPoint,
        fs_type: &str,
        opts: &MountOptions,
    ) -> io::Result<()> {
        let (flags, data) = opts.to_flags_and_data();
        let target = target.path();
        self.enter(
            "mount",
            &[&device.display(), &target.display(), &fs_type, &data],
        )?;
        self.state().mounts.push(MountEntry {
            mount_point: target.to_path_buf(),
            fs_type: fs_type.to_string(),
            source: device.display().to_string(),
            root: PathBuf::from("/"),
            options: if flags.contains(nix::mount::MsFlags::MS_RDONLY) {
                "ro"
            } else {
                "rw"
            }
            .into(),
            super_options: data,
        });
        Ok(())
    }

    fn bind(
        &self,
        source: &MountPoint,
        target: &MountPoint,
        opts: &MountOptions,
    ) -> io::Result<()> {
        let (source, target) = (source.path(), target.path());
        self.enter(
            "bind",
            &[&source.display(), &target.display(), &opts.read_only],
        )?;
        self.state().mounts.push(MountEntry {
            mount_point: target.to_path_buf(),
            fs_type: "bind".into(),
            source: source.display().to_string(),
            root: source.to_path_buf(),
            options: if opts.read_only { "ro" } else { "rw" }.into(),
            super_options: String::new(),
        });
        Ok(())
    }

    fn mount_fuse_overlay(
        &self,
        program: &Path,
        data: &str,
        target: &MountPoint,
        read_only: bool,
    ) -> io::Result<()> {
        let target = target.path();
        self.enter(
            "mount_fuse_overlay",
            &[&program.display(), &data, &target.display(), &read_only],
        )?;
        self.state().mounts.push(MountEntry {
            mount_point: target.to_path_buf(),
            fs_type: "fuse.stowage-overlay".into(),
            source: "stowage-overlay".into(),
            root: PathBuf::from("/"),
            options: if read_only { "ro" } else { "rw" }.into(),
            super_options: data.to_string(),
        });
        Ok(())
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        self.enter("unmount", &[&target.display()])?;
        let mut st = self.state();
        match st.mounts.iter().rposition(|m| m.mount_point == target) {
            Some(i) => {
                st.mounts.remove(i);
                Ok(())
            }
            None => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    fn probe(&self, path: &Path, expected: &Expected) -> io::Result<Found> {
        Ok(self.judge(path, expected))
    }

    fn unmount_expected(&self, path: &Path, expected: &Expected) -> io::Result<Found> {
        let found = self.judge(path, expected);
        if found == Found::Expected {
            self.unmount(path)?;
        }
        Ok(found)
    }

    fn mounts(&self) -> io::Result<Vec<MountEntry>> {
        Ok(self.state().mounts.clone())
    }

    fn freeze(&self, mount: &Path) -> io::Result<()> {
        self.enter("freeze", &[&mount.display()])
    }

    fn thaw(&self, mount: &Path) -> io::Result<()> {
        self.enter("thaw", &[&mount.display()])
    }
}

impl FakeHost {
    /// Makes the host have booted again (every process, every namespace gone).
    pub fn reboot(&self) {
        let mut st = self.state();
        let next = format!("{}+", st.boot_id.clone().unwrap_or_else(|| "boot-1".into()));
        st.boot_id = Some(next);
    }

    /// Makes process `pid` (and its mount namespace) gone.
    pub fn end_process(&self, pid: i32) {
        self.state().ended.insert(pid);
    }
}

impl Namespaces for FakeHost {
    fn mount_namespace(&self, pid: i32) -> io::Result<u64> {
        if self.state().ended.contains(&pid) {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(4_000_000_000 + pid as u64)
    }

    fn attachment_alive(&self, pid: i32, _mnt_ns: Option<u64>) -> io::Result<bool> {
        Ok(!self.state().ended.contains(&pid))
    }

    fn boot_id(&self) -> io::Result<String> {
        Ok(self
            .state()
            .boot_id
            .clone()
            .unwrap_or_else(|| "boot-1".into()))
    }

    fn run(&self, req: &NsRequest) -> io::Result<bool> {
        if let NsRequest::Attach { pid, .. } | NsRequest::Detach { pid, .. } = req
            && self.state().ended.contains(pid)
        {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        match req {
            NsRequest::Attach { pid, target, .. } => {
                self.enter("ns_attach", &[pid, &target.display()])?;
            }
            NsRequest::Detach { pid, target, .. } => {
                self.enter("ns_detach", &[pid, &target.display()])?;
            }
        }
        Ok(false)
    }
}
