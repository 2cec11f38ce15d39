//! Rebuilding the metadata from what the pool holds, after the database was lost or
//! damaged (`stowaged --rebuild-metadata`).
//!
//! Every record the store writes is also mirrored in the pool
//! (`<pool>/records/<table>/<id>.json`, see [`crate::store::Store::mirror_into`]). A
//! rebuild takes each mirrored record whose storage is still in the pool, then infers a
//! record for every volume directory that has none (made before records were mirrored):
//! its kind from the presence of an image file, the filesystem from the image's
//! superblock, the capacity from the image's size or the directory's qgroup limit, and
//! its id as its name (the CO's name for it is not on disk). Nothing in the pool is
//! changed or removed; what cannot be explained is reported by the reconcile that
//! follows.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::manager::{VolumeManager, has_id_shape, is_valid_id};
use crate::model::{
    FsType, GroupSnapshotRecord, ReplicaRecord, SnapshotRecord, VolumeKind, VolumeRecord,
    VolumeState,
};
use crate::pool::{IMAGE_FILE, SNAPSHOTS_DIR, VOLUMES_DIR};
use crate::replication::REPLICAS_DIR;
use crate::store::{Record, Store};

pub use crate::store::RECORDS_DIR;

/// What a rebuild restored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    /// Records restored from their mirrored copies.
    pub restored: Vec<String>,
    /// Volumes found in the pool without a mirrored record, recorded under their id.
    pub inferred: Vec<String>,
    /// Mirrored records whose storage is gone, and mirror files that do not decode.
    pub skipped: Vec<String>,
}

/// The filesystem in an image file, from its superblock's magic.
fn image_fs(image: &Path) -> Result<Option<FsType>> {
    let mut head = vec![0u8; 2048];
    let mut f = std::fs::File::open(image).ctx(|| format!("open {}", image.display()))?;
    let n = f
        .read(&mut head)
        .ctx(|| format!("read {}", image.display()))?;
    head.truncate(n);
    if head.starts_with(b"XFSB") {
        return Ok(Some(FsType::Xfs));
    }
    // ext4: s_magic 0xEF53 at byte 0x38 of the superblock, which starts at 1024.
    if head.get(1024 + 0x38..1024 + 0x3a) == Some(&[0x53, 0xef][..]) {
        return Ok(Some(FsType::Ext4));
    }
    Ok(None)
}

impl VolumeManager {
    /// Entries of the pool that records should explain: volumes, snapshots, replicas.
    pub fn pool_entries(&self) -> Result<usize> {
        let mut n = 0;
        let dirs = [VOLUMES_DIR, SNAPSHOTS_DIR]
            .into_iter()
            .flat_map(|sub| self.pool.entry_dirs(sub))
            .chain(std::iter::once(self.pool.root().join(REPLICAS_DIR)));
        for dir in dirs {
            match std::fs::read_dir(&dir) {
                Ok(entries) => {
                    for e in entries {
                        let e = e.ctx(|| format!("read {}", dir.display()))?;
                        let name = e.file_name().to_string_lossy().into_owned();
                        if is_valid_id(&name) || has_id_shape("s-", &name) {
                            n += 1;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
            }
        }
        Ok(n)
    }

    /// True when the store records no volume, snapshot or replica.
    pub fn metadata_is_empty(&self) -> Result<bool> {
        self.store.is_empty()
    }

    /// Refuses to go on with metadata that knows nothing of a pool that holds
    /// volumes ([`Error::MetadataLost`]).
    pub fn check_metadata_covers_pool(&self, database: &Path) -> Result<()> {
        if self.metadata_is_empty()? {
            let entries = self.pool_entries()?;
            if entries > 0 {
                return Err(Error::MetadataLost {
                    database: database.to_path_buf(),
                    pool: self.pool.root().to_path_buf(),
                    entries,
                });
            }
        }
        Ok(())
    }

    /// Brings the pool's mirror of the records up to date (records made before the
    /// mirror existed, or whose mirror file was lost); returns how many were written.
    pub fn mirror_records(&self) -> Result<usize> {
        self.store.mirror_all()
    }

    /// Rebuilds the records from the pool's mirror and its volume directories.
    pub fn rebuild_metadata(&self) -> Result<RebuildReport> {
        let mirror = self.pool.root().join(RECORDS_DIR);
        let mut report = RebuildReport::default();
        let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();

        // The mirror holds no mount state (see `Record::mirror_json`): the mounts
        // themselves are found again by the CO's next calls.
        self.restore_mirrored::<VolumeRecord>(&mirror, &mut report, |r| {
            is_valid_id(&r.id) && exists(&self.pool.volume_dir(&r.id))
        })?;
        let snapshot_kept =
            |id: &str| has_id_shape("s-", id) && exists(&self.pool.snapshot_dir(id));
        self.restore_mirrored::<SnapshotRecord>(&mirror, &mut report, |r| snapshot_kept(&r.id))?;
        self.restore_mirrored::<GroupSnapshotRecord>(&mirror, &mut report, |r| {
            r.snapshot_ids.iter().all(|s| snapshot_kept(s))
        })?;
        self.restore_mirrored::<ReplicaRecord>(&mirror, &mut report, |r| {
            is_valid_id(&r.id) && exists(&self.replica_dir(&r.id))
        })?;

        let mut names: Vec<String> = Vec::new();
        for dir in self.pool.entry_dirs(VOLUMES_DIR) {
            names.extend(
                std::fs::read_dir(&dir)
                    .ctx(|| format!("read {}", dir.display()))?
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| is_valid_id(n)),
            );
        }
        names.sort();
        for id in names {
            if self.store.get::<VolumeRecord>(&id)?.is_some() {
                continue;
            }
            let rec = self.infer_volume(&id)?;
            self.store.put(&rec)?;
            tracing::warn!(volume.id = %id, kind = %rec.kind, capacity = rec.capacity, "volume without a record: recorded under its id");
            report.inferred.push(id);
        }
        tracing::warn!(
            restored = report.restored.len(),
            inferred = report.inferred.len(),
            skipped = report.skipped.len(),
            "rebuilt the metadata from the pool"
        );
        Ok(report)
    }

    /// Puts back every mirrored record of kind `R` whose storage is still in the pool
    /// (`kept`); the others, and mirror files that do not decode, are reported skipped.
    fn restore_mirrored<R: Record>(
        &self,
        mirror: &Path,
        report: &mut RebuildReport,
        kept: impl Fn(&R) -> bool,
    ) -> Result<()> {
        let (records, bad) = Store::read_mirror::<R>(mirror)?;
        report
            .skipped
            .extend(bad.iter().map(|p| p.display().to_string()));
        for rec in records {
            if kept(&rec) {
                self.store.put(&rec)?;
                report.restored.push(rec.id().to_string());
            } else {
                report.skipped.push(rec.id().to_string());
            }
        }
        Ok(())
    }

    /// A record for a volume directory that has none.
    fn infer_volume(&self, id: &str) -> Result<VolumeRecord> {
        let dir = self.pool.volume_dir(id);
        let image = dir.join(IMAGE_FILE);
        let subvolume_id = if self.pool.enforces_dir_capacity() {
            self.host.btrfs.subvolume_id(&dir).ok()
        } else {
            None
        };
        let mut rec = VolumeRecord {
            id: id.to_string(),
            name: id.to_string(),
            state: VolumeState::Ready,
            subvolume_id,
            generation: 1,
            ..Default::default()
        };
        if std::fs::symlink_metadata(&image).is_ok_and(|m| m.is_file()) {
            rec.kind = VolumeKind::Loop;
            if self.pool.host_images().is_some_and(|i| dir.starts_with(i)) {
                rec.layout = Some(crate::model::Layout::HostImage);
            }
            rec.fs = Some(image_fs(&image)?.unwrap_or(FsType::Ext4));
            rec.capacity = std::fs::metadata(&image)
                .ctx(|| format!("stat {}", image.display()))?
                .len();
            rec.fs_size = rec.capacity;
            rec.capacity_enforced = true;
        } else {
            rec.kind = VolumeKind::Dir;
            let limit = self.pool.qgroup_usage(&rec)?.and_then(|q| q.max_referenced);
            rec.capacity_enforced = limit.is_some();
            rec.capacity = limit.unwrap_or(0);
        }
        rec.parameters
            .insert(crate::params::KIND.to_string(), rec.kind.to_string());
        if let Some(fs) = rec.fs {
            rec.parameters
                .insert(crate::params::FS_TYPE.to_string(), fs.to_string());
        }
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::tests::{fixture, req};

    #[test]
    fn records_come_back_from_the_mirror_and_volumes_without_one_are_inferred() {
        let f = fixture(true);
        let dir = f.mgr.create(&req("data", "dir", 64 << 20)).unwrap();
        let lp = f.mgr.create(&req("disk", "loop", 64 << 20)).unwrap();
        let snap = f.mgr.create_snapshot("snap", &dir.id).unwrap();
        // A volume made before records were mirrored: no mirror file.
        let old = f.mgr.create(&req("old", "dir", 32 << 20)).unwrap();
        let mirror = f.mgr.pool.root().join(RECORDS_DIR);
        std::fs::remove_file(mirror.join("volumes").join(format!("{}.json", old.id))).unwrap();
        // A mirrored record whose storage is gone.
        let gone = f.mgr.create(&req("gone", "dir", 32 << 20)).unwrap();
        std::fs::remove_dir_all(f.mgr.pool.volume_dir(&gone.id)).unwrap();

        // The database is lost: wipe every record (without touching the mirror).
        let db = f.dir.path().join("meta.redb");
        let fresh = f.dir.path().join("fresh.redb");
        let mut store = Store::open(&fresh).unwrap();
        store.mirror_into(mirror.clone());
        let mgr = VolumeManager::new(store, f.mgr.pool.clone(), f.fake.host(), f.mgr.node.clone());
        assert!(matches!(
            mgr.check_metadata_covers_pool(&db),
            Err(Error::MetadataLost { entries: 4, .. })
        ));
        let report = mgr.rebuild_metadata().unwrap();
        assert_eq!(report.inferred, vec![old.id.clone()]);
        assert_eq!(report.skipped, vec![gone.id.clone()]);
        mgr.check_metadata_covers_pool(&db).unwrap();
        assert_eq!(mgr.get(&dir.id).unwrap().name, "data");
        assert_eq!(mgr.get(&lp.id).unwrap().kind, VolumeKind::Loop);
        assert_eq!(mgr.get(&old.id).unwrap().name, old.id);
        assert_eq!(mgr.get(&old.id).unwrap().capacity, 32 << 20);
        assert!(mgr.get_snapshot(&snap.id).is_ok());
        // The name is taken again: a create of "data" is the same volume, not a new one.
        assert_eq!(
            mgr.create(&req("data", "dir", 64 << 20)).unwrap().id,
            dir.id
        );
    }
}
