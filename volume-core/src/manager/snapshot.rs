//! Snapshots: read-only point-in-time copies of volumes (btrfs snapshots of the
//! volume's subvolume, or sparse-aware copies on plain pools), alone or as a group
//! taken at one instant. A staged loop volume's filesystem is frozen while it is
//! copied, so the snapshot is consistent rather than merely crash-consistent.
//! Snapshots outlive the volume they were taken of.

use crate::error::{Error, Result};
use crate::manager::{
    GROUP_PREFIX, SNAPSHOT_PREFIX, VolumeManager, has_id_shape, new_id, now_precise, validate_name,
};
use crate::model::{GroupSnapshotRecord, SnapshotRecord, VolumeRecord, VolumeState};

/// Which snapshots ListSnapshots wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotFilter {
    /// Only this snapshot.
    pub snapshot_id: Option<String>,
    /// Only snapshots of this volume.
    pub source_volume_id: Option<String>,
}

impl VolumeManager {
    /// Takes a snapshot named `name` of volume `source`; a repeat with the same name and
    /// source returns the existing one, with another source fails.
    pub fn create_snapshot(&self, name: &str, source: &str) -> Result<SnapshotRecord> {
        self.snapshot_of(name, source, || self.claim(source).map(Some))
    }

    /// [`Self::create_snapshot`] of a volume whose guard the caller already holds.
    pub(crate) fn create_snapshot_claimed(
        &self,
        name: &str,
        source: &str,
    ) -> Result<SnapshotRecord> {
        self.snapshot_of(name, source, || Ok(None))
    }

    fn snapshot_of(
        &self,
        name: &str,
        source: &str,
        claim: impl FnOnce() -> Result<Option<crate::guard::OperationGuard>>,
    ) -> Result<SnapshotRecord> {
        validate_name(name)?;
        let _name_guard = self.inflight().try_claim([format!("snapshot:{name}")])?;
        if let Some(existing) = self.store.get_by_name::<SnapshotRecord>(name)? {
            match existing.state {
                VolumeState::Ready if existing.source_volume_id == source => return Ok(existing),
                VolumeState::Ready => {
                    return Err(Error::NameConflict {
                        name: name.to_string(),
                        reason: format!("it is a snapshot of {}", existing.source_volume_id),
                    });
                }
                VolumeState::Creating | VolumeState::Deleting => self.forget_snapshot(&existing)?,
            }
        }
        let _guard = claim()?;
        let vol = self.get(source)?;
        let mut snaps = self.snapshot_volumes(&[vol], name, None)?;
        Ok(snaps.remove(0))
    }

    /// Snapshots `vols` at one instant (filesystems frozen together), naming single
    /// snapshots `name` and group members `name-<index>`. The caller holds the guards.
    fn snapshot_volumes(
        &self,
        vols: &[VolumeRecord],
        name: &str,
        group_id: Option<&str>,
    ) -> Result<Vec<SnapshotRecord>> {
        let (secs, nanos) = now_precise();
        let mut records: Vec<SnapshotRecord> = vols
            .iter()
            .enumerate()
            .map(|(i, v)| SnapshotRecord {
                id: new_id(SNAPSHOT_PREFIX),
                name: match group_id {
                    Some(g) => format!("{g}-{i}"),
                    None => name.to_string(),
                },
                source_volume_id: v.id.clone(),
                kind: v.kind,
                fs: v.fs,
                size_bytes: v.capacity,
                fs_size: v.filesystem_bytes(),
                created_at: secs,
                created_nanos: nanos,
                state: VolumeState::Creating,
                group_id: group_id.map(str::to_string),
            })
            .collect();
        for r in &records {
            self.store.put(r)?;
        }
        let mut taken = Vec::new();
        let result = self.with_frozen(vols, || {
            for (v, r) in vols.iter().zip(&records) {
                self.pool.take_snapshot(&v.id, &r.id)?;
                taken.push(r.id.clone());
            }
            Ok(())
        });
        if let Err(e) = result {
            for r in &records {
                if let Err(cleanup) = self.forget_snapshot(r) {
                    tracing::warn!(snapshot.id = %r.id, error = %cleanup, "cleanup after failed snapshot");
                }
            }
            return Err(e);
        }
        for r in &mut records {
            r.state = VolumeState::Ready;
            self.store.put(r)?;
            tracing::info!(snapshot.id = %r.id, volume.id = %r.source_volume_id, "snapshot taken");
        }
        Ok(records)
    }

    /// Deletes snapshot `id`; one that does not exist is already deleted. A member of a
    /// group snapshot is deleted with its group only.
    pub fn delete_snapshot(&self, id: &str) -> Result<()> {
        if !has_id_shape(SNAPSHOT_PREFIX, id) {
            return Ok(());
        }
        let _guard = self.inflight().try_claim([format!("snapshot-id:{id}")])?;
        let Some(mut snap) = self.store.get::<SnapshotRecord>(id)? else {
            return Ok(());
        };
        if let Some(g) = &snap.group_id
            && self.store.get::<GroupSnapshotRecord>(g)?.is_some()
        {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {id} belongs to group snapshot {g}; delete the group"
            )));
        }
        snap.state = VolumeState::Deleting;
        self.store.put(&snap)?;
        self.forget_snapshot(&snap)?;
        tracing::info!(snapshot.id = %id, "deleted snapshot");
        Ok(())
    }

    /// Ready snapshots matching `filter` with ids after `after`, at most `limit`.
    pub fn list_snapshots(
        &self,
        filter: &SnapshotFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SnapshotRecord>> {
        if let Some(id) = &filter.snapshot_id {
            return Ok(match self.get_snapshot(id) {
                Ok(s)
                    if filter
                        .source_volume_id
                        .as_ref()
                        .is_none_or(|v| *v == s.source_volume_id)
                        && after.is_none_or(|a| s.id.as_str() > a) =>
                {
                    vec![s]
                }
                _ => Vec::new(),
            });
        }
        let mut out = Vec::new();
        let mut cursor = after.map(str::to_string);
        while out.len() < limit {
            let batch = self
                .store
                .list_after::<SnapshotRecord>(cursor.as_deref(), 256)?;
            let Some(last) = batch.last() else { break };
            cursor = Some(last.id.clone());
            out.extend(batch.into_iter().filter(|s| {
                s.state == VolumeState::Ready
                    && filter
                        .source_volume_id
                        .as_ref()
                        .is_none_or(|v| *v == s.source_volume_id)
            }));
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Snapshots volumes `sources` together as group snapshot `name`; idempotent by name
    /// and source set.
    pub fn create_group_snapshot(
        &self,
        name: &str,
        sources: &[String],
    ) -> Result<(GroupSnapshotRecord, Vec<SnapshotRecord>)> {
        validate_name(name)?;
        if sources.is_empty() {
            return Err(Error::InvalidArgument(
                "source_volume_ids are required".into(),
            ));
        }
        let mut unique = sources.to_vec();
        unique.sort();
        unique.dedup();
        if unique.len() != sources.len() {
            return Err(Error::InvalidArgument(
                "source_volume_ids repeat a volume".into(),
            ));
        }
        let _name_guard = self.inflight().try_claim([format!("group:{name}")])?;
        if let Some(existing) = self.store.get_by_name::<GroupSnapshotRecord>(name)? {
            let mut have = existing.source_volume_ids.clone();
            have.sort();
            if existing.state == VolumeState::Ready && have == unique {
                let members = self.group_members(&existing)?;
                return Ok((existing, members));
            }
            if existing.state == VolumeState::Ready {
                return Err(Error::NameConflict {
                    name: name.to_string(),
                    reason: "it holds other volumes".into(),
                });
            }
            self.forget_group(&existing)?;
        }
        let _guards = self
            .inflight()
            .try_claim(sources.iter().map(|s| format!("id:{s}")))?;
        let vols = sources
            .iter()
            .map(|s| self.get(s))
            .collect::<Result<Vec<_>>>()?;
        let (secs, nanos) = now_precise();
        let mut group = GroupSnapshotRecord {
            id: new_id(GROUP_PREFIX),
            name: name.to_string(),
            snapshot_ids: Vec::new(),
            source_volume_ids: sources.to_vec(),
            created_at: secs,
            created_nanos: nanos,
            state: VolumeState::Creating,
        };
        self.store.put(&group)?;
        let snaps = match self.snapshot_volumes(&vols, name, Some(&group.id)) {
            Ok(s) => s,
            Err(e) => {
                let _ = self.store.remove::<GroupSnapshotRecord>(&group.id);
                return Err(e);
            }
        };
        group.snapshot_ids = snaps.iter().map(|s| s.id.clone()).collect();
        group.state = VolumeState::Ready;
        self.store.put(&group)?;
        tracing::info!(group.id = %group.id, volumes = sources.len(), "group snapshot taken");
        Ok((group, snaps))
    }

    /// Group snapshot `id` and its members.
    pub fn get_group_snapshot(
        &self,
        id: &str,
    ) -> Result<(GroupSnapshotRecord, Vec<SnapshotRecord>)> {
        let not_found = || Error::GroupSnapshotNotFound(id.to_string());
        if !has_id_shape(GROUP_PREFIX, id) {
            return Err(not_found());
        }
        match self.store.get::<GroupSnapshotRecord>(id)? {
            Some(g) if g.state == VolumeState::Ready => {
                let members = self.group_members(&g)?;
                Ok((g, members))
            }
            _ => Err(not_found()),
        }
    }

    /// Deletes group snapshot `id` and its members. `snapshot_ids`, when given, must
    /// name exactly the members.
    pub fn delete_group_snapshot(&self, id: &str, snapshot_ids: &[String]) -> Result<()> {
        if !has_id_shape(GROUP_PREFIX, id) {
            return Ok(());
        }
        let _guard = self.inflight().try_claim([format!("group-id:{id}")])?;
        let Some(mut group) = self.store.get::<GroupSnapshotRecord>(id)? else {
            return Ok(());
        };
        if !snapshot_ids.is_empty() {
            let mut given = snapshot_ids.to_vec();
            given.sort();
            let mut have = group.snapshot_ids.clone();
            have.sort();
            if given != have {
                return Err(Error::InvalidArgument(format!(
                    "snapshot_ids do not match the members of group snapshot {id}"
                )));
            }
        }
        group.state = VolumeState::Deleting;
        self.store.put(&group)?;
        self.forget_group(&group)?;
        tracing::info!(group.id = %id, "deleted group snapshot");
        Ok(())
    }

    fn group_members(&self, g: &GroupSnapshotRecord) -> Result<Vec<SnapshotRecord>> {
        g.snapshot_ids
            .iter()
            .map(|s| self.get_snapshot(s))
            .collect()
    }

    /// Removes a group's member snapshots, then the group record.
    pub(crate) fn forget_group(&self, g: &GroupSnapshotRecord) -> Result<()> {
        for sid in &g.snapshot_ids {
            if let Some(s) = self.store.get::<SnapshotRecord>(sid)? {
                self.forget_snapshot(&s)?;
            }
        }
        self.store.remove::<GroupSnapshotRecord>(&g.id)
    }
}

#[cfg(test)]
mod tests {
    use super::SnapshotFilter;
    use crate::error::Error;
    use crate::manager::node::StageOptions;
    use crate::manager::tests::{fixture, req};
    use crate::model::ContentSource;

    #[test]
    fn snapshot_is_idempotent_by_name_and_source_and_survives_its_volume() {
        let f = fixture(true);
        let v = f.mgr.create(&req("v", "dir", 4 << 20)).unwrap();
        std::fs::write(f.mgr.pool().volume_dir(&v.id).join("data"), b"one").unwrap();
        let s = f.mgr.create_snapshot("snap", &v.id).unwrap();
        assert_eq!(f.mgr.create_snapshot("snap", &v.id).unwrap().id, s.id);
        let other = f.mgr.create(&req("w", "dir", 4 << 20)).unwrap();
        assert!(matches!(
            f.mgr.create_snapshot("snap", &other.id),
            Err(Error::NameConflict { .. })
        ));
        assert!(
            f.fake
                .calls()
                .iter()
                .any(|c| c.starts_with("snapshot") && c.ends_with("true"))
        );

        f.mgr.delete(&v.id).unwrap();
        assert_eq!(f.mgr.get_snapshot(&s.id).unwrap().source_volume_id, v.id);

        // Restore into a larger volume.
        let mut r = req("restored", "dir", 8 << 20);
        r.source = Some(ContentSource::Snapshot(s.id.clone()));
        let restored = f.mgr.create(&r).unwrap();
        assert_eq!(restored.capacity, 8 << 20);
        assert_eq!(
            std::fs::read(f.mgr.pool().volume_dir(&restored.id).join("data")).unwrap(),
            b"one"
        );
        assert_eq!(
            f.fake.limit_of(&f.mgr.pool().volume_dir(&restored.id)),
            Some(8 << 20)
        );
    }

    #[test]
    fn restore_needs_matching_kind_and_existing_source() {
        let f = fixture(true);
        let v = f.mgr.create(&req("v", "dir", 4 << 20)).unwrap();
        let s = f.mgr.create_snapshot("snap", &v.id).unwrap();
        let mut r = req("as-loop", "loop", 64 << 20);
        r.source = Some(ContentSource::Snapshot(s.id.clone()));
        assert!(matches!(f.mgr.create(&r), Err(Error::InvalidArgument(_))));
        let mut r = req("missing", "dir", 4 << 20);
        r.source = Some(ContentSource::Snapshot(
            "s-0123456789abcdef0123456789abcdef".into(),
        ));
        assert!(matches!(f.mgr.create(&r), Err(Error::SnapshotNotFound(_))));
        let mut r = req("missing-vol", "dir", 4 << 20);
        r.source = Some(ContentSource::Volume(
            "v-0123456789abcdef0123456789abcdef".into(),
        ));
        assert!(matches!(f.mgr.create(&r), Err(Error::VolumeNotFound(_))));
        assert_eq!(
            f.mgr.list(None, 10).unwrap().len(),
            1,
            "failed restores leave no volume"
        );
    }

    #[test]
    fn staged_loop_volume_is_frozen_while_snapshotted() {
        let f = fixture(true);
        let v = f.mgr.create(&req("v", "loop", 64 << 20)).unwrap();
        let staging = f.dir.path().join("staging");
        f.mgr.attach(&v.id, "node-1", false, 0).unwrap();
        f.mgr
            .stage(&v.id, &staging, &StageOptions::default())
            .unwrap();
        f.fake.clear_calls();
        f.mgr.create_snapshot("snap", &v.id).unwrap();
        let calls = f.fake.calls();
        let pos = |p: &str| calls.iter().position(|c| c.starts_with(p)).unwrap();
        assert!(
            pos("freeze") < pos("snapshot") && pos("snapshot") < pos("thaw"),
            "{calls:?}"
        );
    }

    #[test]
    fn failed_snapshot_thaws_and_leaves_no_record() {
        let f = fixture(true);
        let v = f.mgr.create(&req("v", "loop", 64 << 20)).unwrap();
        f.mgr.attach(&v.id, "node-1", false, 0).unwrap();
        f.mgr
            .stage(&v.id, &f.dir.path().join("s"), &StageOptions::default())
            .unwrap();
        f.fake.fail_next("snapshot", libc::ENOSPC);
        assert!(f.mgr.create_snapshot("snap", &v.id).is_err());
        assert!(f.fake.calls().iter().any(|c| c.starts_with("thaw")));
        assert!(
            f.mgr
                .list_snapshots(&SnapshotFilter::default(), None, 10)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn list_filters_and_pages() {
        let f = fixture(true);
        let a = f.mgr.create(&req("a", "dir", 1 << 20)).unwrap();
        let b = f.mgr.create(&req("b", "dir", 1 << 20)).unwrap();
        for i in 0..3 {
            f.mgr.create_snapshot(&format!("a{i}"), &a.id).unwrap();
        }
        let sb = f.mgr.create_snapshot("b0", &b.id).unwrap();
        let all = f
            .mgr
            .list_snapshots(&SnapshotFilter::default(), None, 100)
            .unwrap();
        assert_eq!(all.len(), 4);
        let page = f
            .mgr
            .list_snapshots(&SnapshotFilter::default(), None, 2)
            .unwrap();
        let rest = f
            .mgr
            .list_snapshots(&SnapshotFilter::default(), Some(&page[1].id), 100)
            .unwrap();
        assert_eq!(page.len() + rest.len(), 4);
        let of_a = SnapshotFilter {
            source_volume_id: Some(a.id.clone()),
            ..Default::default()
        };
        assert_eq!(f.mgr.list_snapshots(&of_a, None, 100).unwrap().len(), 3);
        let by_id = SnapshotFilter {
            snapshot_id: Some(sb.id.clone()),
            ..Default::default()
        };
        assert_eq!(
            f.mgr.list_snapshots(&by_id, None, 100).unwrap()[0].id,
            sb.id
        );
        let none = SnapshotFilter {
            snapshot_id: Some("bogus".into()),
            ..Default::default()
        };
        assert!(f.mgr.list_snapshots(&none, None, 100).unwrap().is_empty());
    }

    #[test]
    fn group_snapshot_freezes_all_then_snapshots_then_thaws() {
        let f = fixture(true);
        let a = f.mgr.create(&req("a", "loop", 64 << 20)).unwrap();
        let b = f.mgr.create(&req("b", "loop", 64 << 20)).unwrap();
        for (v, p) in [(&a, "sa"), (&b, "sb")] {
            f.mgr.attach(&v.id, "node-1", false, 0).unwrap();
            f.mgr
                .stage(&v.id, &f.dir.path().join(p), &StageOptions::default())
                .unwrap();
        }
        f.fake.clear_calls();
        let ids = vec![a.id.clone(), b.id.clone()];
        let (g, snaps) = f.mgr.create_group_snapshot("grp", &ids).unwrap();
        assert_eq!(snaps.len(), 2);
        let calls = f.fake.calls();
        let kinds: Vec<&str> = calls.iter().map(|c| c.split(' ').next().unwrap()).collect();
        assert_eq!(
            kinds,
            ["freeze", "freeze", "snapshot", "snapshot", "thaw", "thaw"]
        );
        assert_eq!(f.mgr.create_group_snapshot("grp", &ids).unwrap().0.id, g.id);
        assert!(matches!(
            f.mgr.delete_snapshot(&snaps[0].id),
            Err(Error::FailedPrecondition(_))
        ));
        assert!(matches!(
            f.mgr.delete_group_snapshot(&g.id, &[snaps[0].id.clone()]),
            Err(Error::InvalidArgument(_))
        ));
        f.mgr.delete_group_snapshot(&g.id, &[]).unwrap();
        assert!(matches!(
            f.mgr.get_group_snapshot(&g.id),
            Err(Error::GroupSnapshotNotFound(_))
        ));
        assert!(matches!(
            f.mgr.get_snapshot(&snaps[1].id),
            Err(Error::SnapshotNotFound(_))
        ));
    }
}
