//! The fake's btrfs: subvolumes as plain directories, qgroup limits, nodatacow marks,
//! and a toy send stream.

use super::devices::copy_dir;
use super::*;

impl Btrfs for FakeHost {
    fn is_btrfs(&self, _path: &Path) -> io::Result<bool> {
        Ok(self.btrfs)
    }

    fn fs_uuid(&self, _mount: &Path) -> Result<String> {
        Ok("00000000-fake".into())
    }

    fn enable_quota(&self, mount: &Path) -> Result<()> {
        self.enter("enable_quota", &[&mount.display()])
            .map_err(|e| to_err("enable_quota", e))
    }

    fn create_subvolume(&self, path: &Path) -> Result<u64> {
        self.enter("create_subvolume", &[&path.display()])
            .map_err(|e| to_err("create_subvolume", e))?;
        std::fs::create_dir(path).map_err(|e| to_err("create_subvolume", e))?;
        let mut st = self.state();
        let id = st.next_subvolume;
        st.next_subvolume += 1;
        st.subvolumes.insert(path.to_path_buf(), id);
        Ok(id)
    }

    fn snapshot(&self, source: &Path, dest: &Path, read_only: bool) -> Result<u64> {
        self.enter(
            "snapshot",
            &[&source.display(), &dest.display(), &read_only],
        )
        .map_err(|e| to_err("snapshot", e))?;
        copy_dir(source, dest).map_err(|e| to_err("snapshot", e))?;
        let key = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
        let (from, to) = (
            key(source).map_err(|e| to_err("snapshot", e))?,
            key(dest).map_err(|e| to_err("snapshot", e))?,
        );
        let mut st = self.state();
        // A snapshot's root keeps its source's flags, as on btrfs.
        if st.nocow.contains(&from) {
            st.nocow.insert(to);
        }
        let id = st.next_subvolume;
        st.next_subvolume += 1;
        st.subvolumes.insert(dest.to_path_buf(), id);
        Ok(id)
    }

    fn set_compression(&self, path: &Path, algorithm: &str) -> Result<()> {
        self.enter("set_compression", &[&path.display(), &algorithm])
            .map_err(|e| to_err("set_compression", e))?;
        // As on btrfs: a compressed directory stops handing nodatacow to new files.
        if algorithm != "none" {
            let meta = std::fs::metadata(path).map_err(|e| to_err("set_compression", e))?;
            self.state().nocow.remove(&(meta.dev(), meta.ino()));
        }
        Ok(())
    }

    fn delete_subvolume(&self, path: &Path) -> Result<()> {
        self.enter("delete_subvolume", &[&path.display()])
            .map_err(|e| to_err("delete_subvolume", e))?;
        std::fs::remove_dir_all(path).map_err(|e| to_err("delete_subvolume", e))?;
        let mut st = self.state();
        st.subvolumes.remove(path);
        st.limits.remove(path);
        Ok(())
    }

    fn set_limit(&self, path: &Path, bytes: u64) -> Result<()> {
        self.enter("set_limit", &[&path.display(), &bytes])
            .map_err(|e| to_err("set_limit", e))?;
        self.state().limits.insert(path.to_path_buf(), bytes);
        Ok(())
    }

    fn qgroup_usage(&self, _fs_uuid: &str, subvolume_id: u64) -> Result<Option<QgroupUsage>> {
        let st = self.state();
        let limit = st
            .subvolumes
            .iter()
            .find(|(_, id)| **id == subvolume_id)
            .and_then(|(p, _)| st.limits.get(p).copied());
        Ok(limit.map(|l| QgroupUsage {
            referenced: 16384,
            max_referenced: Some(l),
        }))
    }

    fn subvolume_id(&self, path: &Path) -> Result<u64> {
        self.state()
            .subvolumes
            .get(path)
            .copied()
            .ok_or_else(|| to_err("subvolume_id", io::Error::from_raw_os_error(libc::ENOENT)))
    }

    fn set_nocow(&self, file: &File) -> io::Result<()> {
        self.enter("set_nocow", &[])?;
        let meta = file.metadata()?;
        self.state().nocow.insert((meta.dev(), meta.ino()));
        Ok(())
    }

    fn clear_nocow(&self, dir: &File) -> io::Result<()> {
        self.enter("clear_nocow", &[])?;
        let meta = dir.metadata()?;
        self.state().nocow.remove(&(meta.dev(), meta.ino()));
        Ok(())
    }

    fn is_nocow(&self, file: &File) -> io::Result<bool> {
        let meta = file.metadata()?;
        Ok(self.state().nocow.contains(&(meta.dev(), meta.ino())))
    }

    fn send(&self, snapshot: &Path, parent: Option<&Path>) -> Result<Box<dyn SendStream>> {
        let parent_text = parent.map(|p| p.display().to_string()).unwrap_or_default();
        self.enter("send", &[&snapshot.display(), &parent_text])
            .map_err(|e| to_err("send", e))?;
        let bytes = fake_stream(snapshot).map_err(|e| to_err("send", e))?;
        Ok(Box::new(FakeSend(io::Cursor::new(bytes))))
    }

    fn is_subvolume(&self, path: &Path) -> io::Result<bool> {
        Ok(self.state().subvolumes.contains_key(path))
    }

    fn wait_for_cleaner(&self, path: &Path, _timeout: std::time::Duration) -> Result<bool> {
        self.enter("wait_for_cleaner", &[&path.display()])
            .map_err(|e| to_err("wait_for_cleaner", e))?;
        Ok(true)
    }

    fn subvolume_uuids(&self, path: &Path) -> Result<Vec<[u8; 16]>> {
        // The fake's received subvolumes are plain directories without an id.
        Ok(self
            .subvolume_id(path)
            .map(|id| {
                let mut uuid = [0u8; 16];
                uuid[..8].copy_from_slice(&id.to_le_bytes());
                vec![uuid]
            })
            .unwrap_or_default())
    }

    fn receive(&self, dir: &Path, _expect: Expect) -> Result<Box<dyn ReceiveSink>> {
        self.enter("receive", &[&dir.display()])
            .map_err(|e| to_err("receive", e))?;
        Ok(Box::new(FakeReceive {
            dir: dir.to_path_buf(),
            bytes: Vec::new(),
        }))
    }
}

/// The fake's send stream format: `FAKESEND\n<subvolume name>\n`, then per top-level
/// regular file `<name>\n<length>\n<bytes>`. Always a full stream.
pub(super) const FAKE_MAGIC: &str = "FAKESEND\n";

pub(super) fn fake_stream(snapshot: &Path) -> io::Result<Vec<u8>> {
    let name = snapshot
        .file_name()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut out = format!("{FAKE_MAGIC}{}\n", name.to_string_lossy()).into_bytes();
    let mut entries: Vec<_> = std::fs::read_dir(snapshot)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if e.file_type()?.is_file() {
            let data = std::fs::read(e.path())?;
            out.extend_from_slice(
                format!("{}\n{}\n", e.file_name().to_string_lossy(), data.len()).as_bytes(),
            );
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

#[derive(Debug)]
pub(super) struct FakeSend(io::Cursor<Vec<u8>>);

impl io::Read for FakeSend {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl SendStream for FakeSend {
    fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// Collects the stream and applies it at `finish`, as `btrfs receive` would: the
/// subvolume appears under `dir` with the sender's name; a malformed or truncated
/// stream fails, leaving what was made so far.
#[derive(Debug)]
pub(super) struct FakeReceive {
    dir: PathBuf,
    bytes: Vec<u8>,
}

impl io::Write for FakeReceive {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ReceiveSink for FakeReceive {
    fn finish(self: Box<Self>) -> Result<()> {
        let bad = || Error::Command {
            program: "fake receive".into(),
            status: "exit status: 1".into(),
            stderr: "malformed stream".into(),
        };
        let rest = self
            .bytes
            .strip_prefix(FAKE_MAGIC.as_bytes())
            .ok_or_else(bad)?;
        let mut lines = rest.splitn(2, |b| *b == b'\n');
        let name = String::from_utf8_lossy(lines.next().ok_or_else(bad)?).into_owned();
        let mut rest = lines.next().ok_or_else(bad)?;
        let sub = self.dir.join(&name);
        std::fs::create_dir(&sub).map_err(|e| to_err("receive", e))?;
        while !rest.is_empty() {
            let mut parts = rest.splitn(3, |b| *b == b'\n');
            let file = String::from_utf8_lossy(parts.next().ok_or_else(bad)?).into_owned();
            let len: usize = String::from_utf8_lossy(parts.next().ok_or_else(bad)?)
                .parse()
                .map_err(|_| bad())?;
            let tail = parts.next().ok_or_else(bad)?;
            if tail.len() < len {
                return Err(bad());
            }
            std::fs::write(sub.join(file), &tail[..len]).map_err(|e| to_err("receive", e))?;
            rest = &tail[len..];
        }
        Ok(())
    }
}
