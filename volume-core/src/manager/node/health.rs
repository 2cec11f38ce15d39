//! A mounted volume's usage and health as the node sees it.

use super::*;

impl VolumeManager {
    /// Usage and health of volume `id` mounted at `path` (its staging path or a target).
    pub fn stats(&self, id: &str, path: &Path) -> Result<(VolumeUsage, VolumeHealth)> {
        let rec = self.get(id)?;
        let path = &volume_path(id, path)?;
        let expected = match rec.staging.as_ref().filter(|s| s.path == *path) {
            Some(_) => Some(self.expected_staging(&rec)?),
            None => match rec.publications.iter().find(|p| p.target == *path) {
                Some(p) => Some(self.expected_publication(&rec, p)?),
                None => None,
            },
        };
        let mounted = match &expected {
            Some(e) => self.probe(path, e)? == Found::Expected,
            None => false,
        };
        if !mounted {
            return Err(Error::PathNotFound {
                id: id.to_string(),
                path: path.to_path_buf(),
            });
        }
        if rec.staging.as_ref().is_some_and(|s| s.block) {
            // A raw device: its size is all there is to report.
            let usage = VolumeUsage {
                total_bytes: rec.capacity,
                ..Default::default()
            };
            return Ok((usage, self.node_health(&rec, None)?));
        }
        // Through a descriptor resolved without links: the numbers are this mount's.
        let st = MountPoint::open(path)
            .and_then(|mp| nix::sys::statvfs::fstatvfs(mp.fd()).map_err(io::Error::from))
            .map_err(|e| Error::io(format!("statvfs {}", path.display()), e))?;
        let frsize = st.fragment_size();
        let mut usage = VolumeUsage {
            total_bytes: st.blocks() * frsize,
            available_bytes: st.blocks_available() * frsize,
            used_bytes: (st.blocks() - st.blocks_free()) * frsize,
            total_inodes: st.files(),
            used_inodes: (st.files()).saturating_sub(st.files_free()),
            available_inodes: st.files_available(),
        };
        if rec.kind.is_directory() {
            // A directory shares the pool's filesystem: report against its own size.
            usage.total_bytes = rec.capacity;
            if let Some(q) = self.pool.qgroup_usage(&rec)? {
                usage.used_bytes = q.referenced;
                usage.available_bytes = rec
                    .capacity
                    .saturating_sub(q.referenced)
                    .min(usage.available_bytes);
            } else {
                usage.used_bytes = usage.used_bytes.min(rec.capacity);
                usage.available_bytes = usage.available_bytes.min(rec.capacity);
            }
        }
        Ok((usage, self.node_health(&rec, Some(&usage))?))
    }

    /// Node-side health of a staged volume.
    pub fn node_health(
        &self,
        rec: &VolumeRecord,
        usage: Option<&VolumeUsage>,
    ) -> Result<VolumeHealth> {
        let mut problems = Vec::new();
        if let Some(s) = &rec.staging {
            match self
                .host
                .mounter
                .mount_at(&s.path)
                .ctx(|| "read mount table".into())?
            {
                None => problems.push(format!("staging mount {} is missing", s.path.display())),
                Some(m) if m.read_only() && rec.kind == VolumeKind::Loop => problems.push(format!(
                    "filesystem at {} is read-only (errors?)",
                    s.path.display()
                )),
                Some(_) => {}
            }
            if rec.kind == VolumeKind::Loop {
                let image = self.pool.image_path(&rec.id);
                if self
                    .host
                    .loops
                    .find(&image)
                    .ctx(|| "list loop devices".into())?
                    .is_empty()
                {
                    problems.push(format!("no loop device is attached to {}", image.display()));
                }
            }
        }
        if !rec.capacity_enforced {
            problems.push("capacity is not enforced on this pool".into());
        }
        if let Some(u) = usage
            && rec.kind.is_directory()
            && rec.capacity_enforced
            && u.available_bytes == 0
        {
            problems.push("quota exhausted".into());
        }
        let abnormal = problems
            .iter()
            .any(|p| !p.starts_with("capacity is not enforced"));
        Ok(VolumeHealth {
            abnormal,
            message: if problems.is_empty() {
                "ok".into()
            } else {
                problems.join("; ")
            },
        })
    }
}
