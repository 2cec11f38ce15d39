//! Start-up reconciliation of the metadata with the host. Interrupted creates are
//! rolled back and interrupted deletes finished (the store recorded the intent, so
//! both are explained); staged and published mounts the daemon owns are restored;
//! anything on disk that no record explains is reported, never deleted.

use std::collections::HashSet;
use std::path::PathBuf;

use crate::error::{IoContext, Result};
use crate::manager::VolumeManager;
use crate::manager::node::PublishOptions;
use crate::model::{GroupSnapshotRecord, SnapshotRecord, VolumeKind, VolumeRecord, VolumeState};

/// What reconciliation found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Volumes whose interrupted create was rolled back.
    pub rolled_back: Vec<String>,
    /// Volumes whose interrupted delete was finished.
    pub finished_deletes: Vec<String>,
    /// Mounts (staging or target paths) that were missing and have been restored.
    pub restored_mounts: Vec<PathBuf>,
    /// Mounts that were missing and could not be restored, with the reason.
    pub broken_mounts: Vec<String>,
    /// Entries in the pool's volumes directory that no record explains.
    pub orphans: Vec<PathBuf>,
    /// Loop devices backed by pool files that are not staged.
    pub stray_loops: Vec<PathBuf>,
    /// Container mounts (`volume pid:target`) whose process and mount namespace were
    /// gone: released (forgotten, and the volume unstaged if attach had staged it).
    pub stale_container_mounts: Vec<String>,
}

impl ReconcileReport {
    /// True when something needs an operator's attention.
    pub fn needs_attention(&self) -> bool {
        !self.broken_mounts.is_empty()
            || !self.orphans.is_empty()
            || !self.stray_loops.is_empty()
            || !self.stale_container_mounts.is_empty()
    }
}

impl VolumeManager {
    /// Brings the host in line with the metadata after a start; see the module docs.
    pub fn reconcile(&self) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        let mut known = HashSet::new();
        for g in self.store.list::<GroupSnapshotRecord>()? {
            if g.state != VolumeState::Ready {
                self.forget_group(&g)?;
                tracing::warn!(group.id = %g.id, "rolled back interrupted group snapshot");
                report.rolled_back.push(g.id);
            }
        }
        for snap in self.store.list::<SnapshotRecord>()? {
            if snap.state == VolumeState::Ready {
                known.insert(snap.id);
                continue;
            }
            self.forget_snapshot(&snap)?;
            if snap.state == VolumeState::Creating {
                tracing::warn!(snapshot.id = %snap.id, "rolled back interrupted snapshot");
                report.rolled_back.push(snap.id);
            } else {
                tracing::warn!(snapshot.id = %snap.id, "finished interrupted snapshot delete");
                report.finished_deletes.push(snap.id);
            }
        }
        let mut staged_images = HashSet::new();
        let volumes = self.store.list::<VolumeRecord>()?;
        self.reconcile_replicas(&volumes)?;
        for mut rec in volumes {
            match rec.state {
                VolumeState::Creating => {
                    self.forget(&rec)?;
                    tracing::warn!(volume.id = %rec.id, "rolled back interrupted create");
                    report.rolled_back.push(rec.id);
                    continue;
                }
                VolumeState::Deleting => {
                    self.forget(&rec)?;
                    tracing::warn!(volume.id = %rec.id, "finished interrupted delete");
                    report.finished_deletes.push(rec.id);
                    continue;
                }
                VolumeState::Ready => {}
            }
            known.insert(rec.id.clone());
            if !rec.container_mounts.is_empty() {
                // Attachments of containers that ended while the daemon was down.
                for m in self.release_vanished_attachments(&rec.id)? {
                    report.stale_container_mounts.push(format!(
                        "{} {}:{}",
                        rec.name,
                        m.pid,
                        m.target.display()
                    ));
                }
                rec = self.get(&rec.id)?;
            }
            let Some(stage) = rec.staging.clone() else {
                continue;
            };
            if rec.kind == VolumeKind::Loop {
                staged_images.insert(self.pool.image_path(&rec.id));
            }
            let staged = match self.staging_state(&rec)? {
                crate::os::Found::Expected => true,
                crate::os::Found::Other(other) => {
                    tracing::error!(volume.id = %rec.id, staging = %stage.path.display(), other, "something else is mounted at the staging path");
                    report.broken_mounts.push(format!(
                        "{}: {other} is mounted there instead",
                        stage.path.display()
                    ));
                    false
                }
                crate::os::Found::Nothing => {
                    match self.mount_staging(&mut rec, &stage.path, &stage.mount_flags) {
                        Ok(device) => {
                            tracing::info!(volume.id = %rec.id, staging = %stage.path.display(), "restored staging mount");
                            report.restored_mounts.push(stage.path.clone());
                            if let Some(s) = rec.staging.as_mut() {
                                s.loop_device = device;
                            }
                            self.store.put(&rec)?;
                            true
                        }
                        Err(e) => {
                            tracing::error!(volume.id = %rec.id, staging = %stage.path.display(), error = %e, "cannot restore staging mount");
                            report
                                .broken_mounts
                                .push(format!("{}: {e}", stage.path.display()));
                            false
                        }
                    }
                }
            };
            for p in &rec.publications {
                match self.publication_state(&rec, p)? {
                    crate::os::Found::Expected => continue,
                    crate::os::Found::Other(other) => {
                        report.broken_mounts.push(format!(
                            "{}: {other} is mounted there instead",
                            p.target.display()
                        ));
                        continue;
                    }
                    crate::os::Found::Nothing => {}
                }
                if !staged {
                    report
                        .broken_mounts
                        .push(format!("{}: staging mount is missing", p.target.display()));
                    continue;
                }
                let opts = PublishOptions {
                    read_only: p.read_only,
                    mount_flags: Vec::new(),
                    block: p.block,
                    single_writer: p.single_writer,
                };
                match self.mount_target(&rec, &stage.path, &p.target, &opts) {
                    Ok(()) => report.restored_mounts.push(p.target.clone()),
                    Err(e) => report
                        .broken_mounts
                        .push(format!("{}: {e}", p.target.display())),
                }
            }
        }
        report.orphans = self.pool.orphans(&known)?;
        for orphan in &report.orphans {
            tracing::warn!(path = %orphan.display(), "pool entry without a volume record (left in place)");
        }
        let volumes_dirs: Vec<PathBuf> = self
            .pool
            .entry_dirs(crate::pool::VOLUMES_DIR)
            .into_iter()
            .map(|d| d.canonicalize().unwrap_or(d))
            .collect();
        for l in self.host.loops.list().ctx(|| "list loop devices".into())? {
            // By path, or by inode where the device was bound from another mount
            // namespace (a daemon in an earlier container).
            let ours = volumes_dirs.iter().any(|d| l.backing_under(d).is_some());
            let staged = staged_images.iter().any(|i| {
                i.canonicalize().is_ok_and(|c| {
                    std::fs::metadata(&c).is_ok_and(|m| l.backs(&c, crate::os::FileId::of(&m)))
                })
            });
            if ours && !staged {
                tracing::warn!(device = %l.device.display(), file = %l.backing_file.display(), "loop device on a pool file that is not staged (left attached)");
                report.stray_loops.push(l.device);
            }
        }
        Ok(report)
    }
}

impl VolumeManager {
    /// Replicas after a restart: a promotion that a crash interrupted after its
    /// volume became Ready is finished; what cut-off receives left is removed (their
    /// receivers died with the daemon).
    fn reconcile_replicas(&self, volumes: &[VolumeRecord]) -> Result<()> {
        for rep in self.store.list::<crate::model::ReplicaRecord>()? {
            let promoted = volumes
                .iter()
                .any(|v| v.id == rep.id && v.state == VolumeState::Ready);
            if promoted {
                self.finish_promotion(&rep.id)?;
                tracing::warn!(volume.id = %rep.id, "finished an interrupted promotion");
            } else {
                self.clear_incoming_of(&rep.id)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::manager::node::{PublishOptions, StageOptions};
    use crate::manager::tests::{fixture, req};
    use crate::model::{VolumeKind, VolumeRecord, VolumeState};

    #[test]
    fn interrupted_create_is_rolled_back_and_delete_finished() {
        let f = fixture(true);
        let a = f.mgr.create(&req("a", "dir", 1 << 20)).unwrap();
        let b = f.mgr.create(&req("b", "dir", 1 << 20)).unwrap();
        let mut ra = f.mgr.store.get::<VolumeRecord>(&a.id).unwrap().unwrap();
        ra.state = VolumeState::Creating;
        f.mgr.store.put(&ra).unwrap();
        let mut rb = f.mgr.store.get::<VolumeRecord>(&b.id).unwrap().unwrap();
        rb.state = VolumeState::Deleting;
        f.mgr.store.put(&rb).unwrap();

        let report = f.mgr.reconcile().unwrap();
        assert_eq!(report.rolled_back, vec![a.id.clone()]);
        assert_eq!(report.finished_deletes, vec![b.id.clone()]);
        assert!(f.mgr.store.list::<VolumeRecord>().unwrap().is_empty());
        assert!(!f.mgr.pool().volume_dir(&a.id).exists());
        assert!(!report.needs_attention());
    }

    #[test]
    fn lost_mounts_are_restored_and_orphans_reported_not_deleted() {
        let f = fixture(true);
        let rec = f.mgr.create(&req("l", "loop", 64 << 20)).unwrap();
        assert_eq!(rec.kind, VolumeKind::Loop);
        let staging = f.dir.path().join("staging");
        let target = f.dir.path().join("target");
        f.mgr
            .stage(&rec.id, &staging, &StageOptions::default())
            .unwrap();
        f.mgr
            .publish(&rec.id, &staging, &target, &PublishOptions::default())
            .unwrap();
        // Simulate a reboot: mounts and loop devices gone.
        for m in f.fake.mounted().into_iter().rev() {
            use crate::os::Mounter;
            f.fake.unmount(&m).unwrap();
        }
        for l in f.fake.attached() {
            use crate::os::LoopControl;
            f.fake.detach(&l.device).unwrap();
        }
        let orphan = f.mgr.pool().root().join("volumes/stranger");
        std::fs::create_dir(&orphan).unwrap();

        let report = f.mgr.reconcile().unwrap();
        assert_eq!(
            report.restored_mounts,
            vec![staging.clone(), target.clone()]
        );
        assert_eq!(f.fake.mounted(), vec![staging, target]);
        assert_eq!(f.fake.attached().len(), 1);
        assert_eq!(report.orphans, vec![orphan.clone()]);
        assert!(orphan.exists());
        assert!(report.needs_attention());

        // A second pass finds everything in place and restores nothing.
        let again = f.mgr.reconcile().unwrap();
        assert!(again.restored_mounts.is_empty());
        assert_eq!(f.fake.attached().len(), 1);
    }

    #[test]
    fn attachments_of_gone_processes_are_released_at_start() {
        let f = fixture(true);
        f.mgr.create(&req("c", "dir", 1 << 20)).unwrap();
        f.mgr.create(&req("live", "dir", 1 << 20)).unwrap();
        f.mgr
            .attach_into("c", 4242, "/data".as_ref(), false)
            .unwrap();
        f.mgr
            .attach_into("live", 7, "/data".as_ref(), false)
            .unwrap();
        f.fake.end_process(4242);
        let report = f.mgr.reconcile().unwrap();
        assert_eq!(
            report.stale_container_mounts,
            vec!["c 4242:/data".to_string()]
        );
        assert!(report.needs_attention());
        // Released and unstaged; the live one is untouched.
        let c = f.mgr.resolve("c").unwrap();
        assert!(c.container_mounts.is_empty() && c.staging.is_none());
        assert_eq!(f.mgr.resolve("live").unwrap().container_mounts.len(), 1);
        // A detach right after the process ended is not an error either.
        f.mgr
            .detach_from("c", 4242, "/data".as_ref())
            .expect_err("nothing attached any more");
        f.mgr
            .attach_into("c", 5000, "/data".as_ref(), false)
            .unwrap();
        f.fake.end_process(5000);
        f.mgr
            .detach_from("c", 5000, "/data".as_ref())
            .unwrap_or_else(|e| panic!("{e}"));
        // After a reboot every attachment of the earlier boot is gone, whatever pids
        // and namespace numbers the new boot reuses.
        f.mgr
            .attach_into("c", 6000, "/data".as_ref(), false)
            .unwrap();
        f.fake.reboot();
        let report = f.mgr.reconcile().unwrap();
        assert_eq!(report.stale_container_mounts.len(), 2, "{report:?}");
        assert!(f.mgr.resolve("live").unwrap().container_mounts.is_empty());
        // Delete no longer waits for an attachment whose container is gone.
        f.mgr
            .attach_into("c", 5001, "/data".as_ref(), false)
            .unwrap();
        f.fake.end_process(5001);
        let id = f.mgr.resolve("c").unwrap().id;
        f.mgr.delete(&id).unwrap();
    }
}
