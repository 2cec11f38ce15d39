//! Attaching volumes into running containers: the volume is staged on the host (or its
//! existing staging is reused) and a clone of that mount is moved into the container's
//! mount namespace at a path inside it (see [`crate::os::nsmount`]). Detach removes
//! exactly that mount, and unstages what attach staged once nothing else uses it.

use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::manager::VolumeManager;
use crate::manager::node::StageOptions;
use crate::model::{ContainerMount, VolumeKind, VolumeRecord};
use crate::os::nsmount::NsRequest;

impl VolumeManager {
    /// Mounts `volume` (name or id) at `target` inside the mount namespace of `pid`.
    pub fn attach_into(
        &self,
        volume: &str,
        pid: i32,
        target: &Path,
        read_only: bool,
    ) -> Result<VolumeRecord> {
        if pid <= 0 {
            return Err(Error::InvalidArgument(format!(
                "pid {pid} is not a process id"
            )));
        }
        let target = crate::manager::node::path_arg(target, "target inside the container")?;
        let target = target.as_path();
        let rec = self.resolve(volume)?;
        if rec.kind == VolumeKind::Image {
            return Err(Error::FailedPrecondition(format!(
                "volume {} is an image volume: its overlay is mounted by CSI NodePublish; \
                 attach takes directory and loop volumes",
                rec.id
            )));
        }
        if let Some(m) = rec
            .container_mounts
            .iter()
            .find(|m| m.pid == pid && m.target == target)
        {
            if m.read_only != read_only {
                return Err(Error::PublishConflict(target.to_path_buf()));
            }
            return Ok(rec);
        }
        // Two volumes stacked at one target could not be told apart by detach.
        if let Some(other) = self.store.list::<VolumeRecord>()?.into_iter().find(|v| {
            v.id != rec.id
                && v.container_mounts
                    .iter()
                    .any(|m| m.pid == pid && m.target == target)
        }) {
            return Err(Error::FailedPrecondition(format!(
                "volume {} is already attached into process {pid} at {}; detach it first \
                 or choose another target",
                other.name,
                target.display()
            )));
        }
        let staging = match &rec.staging {
            Some(s) if s.block => {
                return Err(Error::FailedPrecondition(format!(
                    "volume {} is staged for block access",
                    rec.id
                )));
            }
            Some(s) => s.path.clone(),
            None => {
                let path = self.node.attach_dir.join(&rec.id);
                self.stage_from(
                    &rec.id,
                    &path,
                    &StageOptions::default(),
                    crate::manager::node::Origin::Daemon,
                )?;
                path
            }
        };
        let _guard = self.claim(&rec.id)?;
        let mut rec = self.get(&rec.id)?;
        // Unstaged or moved between the look above and the claim: not what we cloned.
        if rec.staging.as_ref().map(|s| &s.path) != Some(&staging) {
            return Err(Error::Busy(rec.id));
        }
        let req = NsRequest::Attach {
            pid,
            source: staging.clone(),
            target: target.to_path_buf(),
            read_only,
        };
        // Taken first: a pid alone could be reused by another process later.
        let mnt_ns = self.host.namespaces.mount_namespace(pid).ok();
        let boot_id = self.host.namespaces.boot_id().ok();
        let idmapped = match self.host.namespaces.run(&req) {
            Ok(i) => i,
            Err(e) => {
                drop(_guard);
                self.release_attach_staging(&rec.id)?;
                return Err(match e.raw_os_error() {
                    Some(libc::ESRCH) => {
                        Error::InvalidArgument(format!("process {pid} does not exist"))
                    }
                    Some(libc::ELOOP) => Error::InvalidArgument(format!(
                        "target {} goes through a symlink inside the container; give the real path",
                        target.display()
                    )),
                    Some(libc::EXDEV) => Error::InvalidArgument(format!(
                        "target {} leaves the container's root",
                        target.display()
                    )),
                    Some(libc::ENODEV) => Error::FailedPrecondition(format!(
                        "volume {}'s staging at {} is not mounted; stage it again",
                        rec.id,
                        staging.display()
                    )),
                    Some(libc::ENOTDIR) => Error::InvalidArgument(format!(
                        "a component of target {} is not a directory",
                        target.display()
                    )),
                    _ => Error::io(
                        format!("mount into process {pid} at {}", target.display()),
                        e,
                    ),
                });
            }
        };
        rec.container_mounts.push(ContainerMount {
            pid,
            target: target.to_path_buf(),
            read_only,
            idmapped,
            mnt_ns,
            boot_id,
        });
        self.store.put(&rec)?;
        tracing::info!(volume.id = %rec.id, pid, target = %target.display(), read_only, idmapped, "attached into container");
        Ok(rec)
    }

    /// Unmounts `volume` from `target` in `pid`'s mount namespace.
    pub fn detach_from(&self, volume: &str, pid: i32, target: &Path) -> Result<()> {
        let target = crate::manager::node::path_arg(target, "target inside the container")?;
        let target = target.as_path();
        let rec = self.resolve(volume)?;
        {
            let _guard = self.claim(&rec.id)?;
            let mut rec = self.get(&rec.id)?;
            let Some(pos) = rec
                .container_mounts
                .iter()
                .position(|m| m.pid == pid && m.target == target)
            else {
                return Err(Error::FailedPrecondition(format!(
                    "volume {} is not attached into process {pid} at {}",
                    rec.id,
                    target.display()
                )));
            };
            let req = NsRequest::Detach {
                pid,
                target: target.to_path_buf(),
                source: rec.staging.as_ref().map(|s| s.path.clone()),
            };
            match self.host.namespaces.run(&req) {
                Ok(_) => {}
                // The process is gone, and its mount namespace with it (or the
                // namespace lives on elsewhere, which we can no longer reach).
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                    tracing::warn!(volume.id = %rec.id, pid, "process gone; forgetting its mount");
                }
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                    return Err(Error::FailedPrecondition(format!(
                        "volume {}'s staging is not mounted, so its mount in process {pid} \
                         cannot be recognised; restart stowaged (it restores lost mounts at \
                         start) and detach again",
                        rec.id
                    )));
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    return Err(Error::FailedPrecondition(format!(
                        "another mount covers volume {} at {} in process {pid} (mounted \
                         there after it); unmount that first",
                        rec.id,
                        target.display()
                    )));
                }
                Err(e) => {
                    return Err(Error::io(
                        format!("unmount {} in process {pid}", target.display()),
                        e,
                    ));
                }
            }
            rec.container_mounts.remove(pos);
            self.store.put(&rec)?;
            tracing::info!(volume.id = %rec.id, pid, target = %target.display(), "detached from container");
        }
        self.release_attach_staging(&rec.id)
    }

    /// Forgets volume `id`'s attachments whose process and mount namespace are gone
    /// (the container ended, the node restarted), and unstages what attach staged for
    /// them; returns what was forgotten. Nothing of a live attachment is touched.
    pub fn release_vanished_attachments(&self, id: &str) -> Result<Vec<ContainerMount>> {
        let gone = {
            let _guard = self.claim(id)?;
            let mut rec = self.get(id)?;
            let mut gone = Vec::new();
            let mut kept = Vec::new();
            let boot = self.host.namespaces.boot_id().ok();
            for m in std::mem::take(&mut rec.container_mounts) {
                let alive = if m.boot_id.is_some() && boot.is_some() && m.boot_id != boot {
                    // Made in an earlier boot: that process and namespace are gone.
                    Ok(false)
                } else {
                    self.host.namespaces.attachment_alive(m.pid, m.mnt_ns)
                };
                match alive {
                    Ok(false) => gone.push(m),
                    Ok(true) => kept.push(m),
                    Err(e) => {
                        tracing::warn!(volume.id = %id, pid = m.pid, error = %e, "cannot tell whether an attachment's process is gone; kept");
                        kept.push(m);
                    }
                }
            }
            if gone.is_empty() {
                return Ok(gone);
            }
            rec.container_mounts = kept;
            self.store.put(&rec)?;
            for m in &gone {
                tracing::warn!(volume.id = %id, pid = m.pid, target = %m.target.display(), "attachment of a process that is gone released");
            }
            gone
        };
        self.release_attach_staging(id)?;
        Ok(gone)
    }

    /// [`Self::release_vanished_attachments`] where volume `id` has attachments; for
    /// operations that an attachment holds up (unstage, delete, step-down).
    pub(crate) fn release_vanished_before(&self, id: &str) -> Result<()> {
        match self.store.get::<VolumeRecord>(id)? {
            Some(rec) if !rec.container_mounts.is_empty() => {
                self.release_vanished_attachments(id).map(|_| ())
            }
            _ => Ok(()),
        }
    }

    /// Unstages a volume attach staged, once no container mount remains.
    fn release_attach_staging(&self, id: &str) -> Result<()> {
        let rec = self.get(id)?;
        let ours = rec
            .staging
            .as_ref()
            .is_some_and(|s| s.path.starts_with(&self.node.attach_dir));
        if ours && rec.container_mounts.is_empty() && rec.publications.is_empty() {
            let path = self.node.attach_dir.join(id);
            self.unstage(id, &path)?;
            std::fs::remove_dir(&path)
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .ctx(|| format!("remove {}", path.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::error::Error;
    use crate::manager::tests::{fixture, req};

    #[test]
    fn attach_stages_once_records_and_detach_unstages() {
        let f = fixture(true);
        let v = f.mgr.create(&req("web-data", "loop", 64 << 20)).unwrap();
        let rec = f
            .mgr
            .attach_into("web-data", 4242, "/data".as_ref(), false)
            .unwrap();
        assert_eq!(rec.container_mounts.len(), 1);
        assert!(rec.staging.is_some());
        // Idempotent; a different read-only flag conflicts.
        f.mgr
            .attach_into(&v.id, 4242, "/data".as_ref(), false)
            .unwrap();
        assert!(matches!(
            f.mgr.attach_into(&v.id, 4242, "/data".as_ref(), true),
            Err(Error::PublishConflict(_))
        ));
        assert_eq!(
            f.fake
                .calls()
                .iter()
                .filter(|c| c.starts_with("ns_attach"))
                .count(),
            1
        );
        assert!(matches!(
            f.mgr.delete(&v.id),
            Err(Error::FailedPrecondition(_))
        ));

        f.mgr
            .detach_from("web-data", 4242, "/data".as_ref())
            .unwrap();
        let rec = f.mgr.get(&v.id).unwrap();
        assert!(rec.container_mounts.is_empty() && rec.staging.is_none());
        assert!(f.fake.mounted().is_empty() && f.fake.attached().is_empty());
        assert!(matches!(
            f.mgr.detach_from("web-data", 4242, "/data".as_ref()),
            Err(Error::FailedPrecondition(_))
        ));
    }

    #[test]
    fn a_second_volume_at_an_occupied_target_is_refused_and_detach_refusals_keep_it() {
        let f = fixture(true);
        f.mgr.create(&req("a", "dir", 1 << 20)).unwrap();
        let b = f.mgr.create(&req("b", "dir", 1 << 20)).unwrap();
        f.mgr.attach_into("a", 7, "/data".as_ref(), false).unwrap();
        let err = f
            .mgr
            .attach_into("b", 7, "/data".as_ref(), false)
            .unwrap_err();
        assert!(
            matches!(&err, Error::FailedPrecondition(m) if m.contains("volume a is already attached")),
            "{err}"
        );
        assert!(f.mgr.get(&b.id).unwrap().staging.is_none());
        // Another process, or another target, is fine.
        f.mgr.attach_into("b", 8, "/data".as_ref(), false).unwrap();

        // Something else mounted over a's mount: the helper answers EBUSY.
        f.fake.fail_next("ns_detach", libc::EBUSY);
        let err = f.mgr.detach_from("a", 7, "/data".as_ref()).unwrap_err();
        assert!(
            matches!(&err, Error::FailedPrecondition(m) if m.contains("another mount covers")),
            "{err}"
        );
        let rec = f.mgr.resolve("a").unwrap();
        assert_eq!(rec.container_mounts.len(), 1, "still attached");
        let err = f.mgr.delete(&rec.id).unwrap_err();
        assert!(
            err.to_string()
                .contains("vol detach a --pid 7 --target /data"),
            "{err}"
        );
        f.mgr.detach_from("a", 7, "/data".as_ref()).unwrap();
    }

    #[test]
    fn a_staging_shared_with_an_attachment_is_not_unstaged_under_it() {
        let f = fixture(true);
        let v = f.mgr.create(&req("s", "dir", 1 << 20)).unwrap();
        let staging = f.dir.path().join("csi-staging");
        f.mgr
            .stage(
                &v.id,
                &staging,
                &crate::manager::node::StageOptions::default(),
            )
            .unwrap();
        f.mgr.attach_into("s", 9, "/data".as_ref(), false).unwrap();
        let err = f.mgr.unstage(&v.id, &staging).unwrap_err();
        assert!(
            matches!(&err, Error::FailedPrecondition(m) if m.contains("attached into process 9")),
            "{err}"
        );
        assert!(f.mgr.get(&v.id).unwrap().staging.is_some());
        f.mgr.detach_from("s", 9, "/data".as_ref()).unwrap();
        // Attach did not stage it, so detach left the staging; now it may go.
        f.mgr.unstage(&v.id, &staging).unwrap();
    }

    #[test]
    fn detach_forgets_a_gone_process_but_not_an_unrecognisable_mount() {
        let f = fixture(true);
        f.mgr.create(&req("g", "dir", 1 << 20)).unwrap();
        f.mgr.attach_into("g", 11, "/data".as_ref(), false).unwrap();
        // The staging is not mounted: the mount cannot be checked, nothing changes.
        f.fake.fail_next("ns_detach", libc::ENODEV);
        let err = f.mgr.detach_from("g", 11, "/data".as_ref()).unwrap_err();
        assert!(
            matches!(&err, Error::FailedPrecondition(m) if m.contains("staging is not mounted")),
            "{err}"
        );
        assert_eq!(f.mgr.resolve("g").unwrap().container_mounts.len(), 1);
        // An ENOENT from the helper is an error, not a gone process.
        f.fake.fail_next("ns_detach", libc::ENOENT);
        assert!(f.mgr.detach_from("g", 11, "/data".as_ref()).is_err());
        assert_eq!(f.mgr.resolve("g").unwrap().container_mounts.len(), 1);
        // The process is gone (ESRCH): its mount went with its namespace.
        f.fake.fail_next("ns_detach", libc::ESRCH);
        f.mgr.detach_from("g", 11, "/data".as_ref()).unwrap();
        let rec = f.mgr.resolve("g").unwrap();
        assert!(rec.container_mounts.is_empty() && rec.staging.is_none());
    }

    #[test]
    fn failed_namespace_mount_leaves_nothing_staged() {
        let f = fixture(true);
        f.mgr.create(&req("d", "dir", 1 << 20)).unwrap();
        f.fake.fail_next("ns_attach", libc::ELOOP);
        let err = f
            .mgr
            .attach_into("d", 7, "/via/link".as_ref(), false)
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument(ref m) if m.contains("symlink")),
            "{err:?}"
        );
        let rec = f.mgr.resolve("d").unwrap();
        assert!(rec.staging.is_none() && rec.container_mounts.is_empty());
        assert!(f.fake.mounted().is_empty());
    }

    #[test]
    fn bad_requests_are_invalid() {
        let f = fixture(true);
        f.mgr.create(&req("d", "dir", 1 << 20)).unwrap();
        assert!(matches!(
            f.mgr.attach_into("d", 0, "/x".as_ref(), false),
            Err(Error::InvalidArgument(_))
        ));
        for target in ["rel", "/a/../b", "/a/./b", "/"] {
            assert!(
                matches!(
                    f.mgr.attach_into("d", 1, target.as_ref(), false),
                    Err(Error::InvalidArgument(_))
                ),
                "{target}"
            );
        }
        assert!(f.fake.calls().iter().all(|c| !c.starts_with("ns_attach")));
        assert!(matches!(
            f.mgr.attach_into("nope", 1, "/x".as_ref(), false),
            Err(Error::VolumeNotFound(_))
        ));
    }
}
