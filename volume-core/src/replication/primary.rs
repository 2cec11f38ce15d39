//! The primary's side: taking replication snapshots, making the stream that brings a
//! replica to one, recording acknowledgements, and pruning what no replica needs.

use super::*;

impl VolumeManager {
    /// Where the primary keeps volume `id`'s replication snapshots.
    pub fn replication_dir(&self, id: &str) -> PathBuf {
        debug_assert!(is_valid_id(id));
        self.pool.root().join(REPLICATION_DIR).join(id)
    }

    /// Where this node keeps the replica of volume `id`.
    pub fn replica_dir(&self, id: &str) -> PathBuf {
        debug_assert!(is_valid_id(id));
        self.pool.root().join(REPLICAS_DIR).join(id)
    }

    /// Claims volume `id`, waiting up to two seconds for a CSI operation on it to end
    /// (background replication should not fail because a stage was running).
    pub(super) fn claim_patiently(&self, id: &str) -> Result<OperationGuard> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match self.claim(id) {
                Err(Error::Busy(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    /// Takes the next replication snapshot of `volume` (name or id): a read-only
    /// snapshot of its subvolume, the filesystem frozen if it is a mounted loop volume.
    pub fn take_replication_snapshot(&self, volume: &str) -> Result<ReplicationSnapshot> {
        let id = self.resolve(volume)?.id;
        let _guard = self.claim_patiently(&id)?;
        let mut vol = self.get(&id)?;
        let dir = self.replication_dir(&id);
        std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        let seq = names_in(&dir)?
            .iter()
            .chain(vol.replication_snapshots.iter().map(|s| &s.name))
            .map(|n| seq_of(n))
            .max()
            .unwrap_or(0)
            + 1;
        let name = snapshot_name(seq, vol.generation.max(1));
        let seq_dir = dir.join(&name);
        std::fs::create_dir(&seq_dir).ctx(|| format!("create {}", seq_dir.display()))?;
        let path = seq_dir.join(SNAPSHOT_SUBVOLUME);
        let source = self.pool.volume_dir(&id);
        let format = self.stream_format_of(&vol);
        let taken_at = now();
        let result = self.room_for_replication_copy(&vol).and_then(|()| {
            self.with_frozen(std::slice::from_ref(&vol), || match format {
                StreamFormat::Btrfs => self.host.btrfs.snapshot(&source, &path, true).map(|_| ()),
                StreamFormat::Chunk => self.host.copier.copy_tree(&source, &path),
            })
        });
        if let Err(e) = result {
            // A copy cut short leaves part of a tree: all of it goes.
            if let Err(cleanup) = self.remove_snapshot_dir(&seq_dir) {
                tracing::warn!(path = %seq_dir.display(), error = %cleanup, "remove failed replication snapshot");
            }
            return Err(e);
        }
        let snap = ReplicationSnapshot {
            name: name.clone(),
            taken_at,
        };
        vol.replication_snapshots.push(snap.clone());
        if let Err(e) = self.store.put(&vol) {
            let _ = self.remove_snapshot_dir(&seq_dir);
            return Err(e);
        }
        tracing::debug!(volume.id = %id, snapshot = %name, "replication snapshot taken");
        Ok(snap)
    }

    /// The stream that brings a replica holding `replica_holds` (snapshot names) to
    /// snapshot `name` of volume `id`: relative to the newest older snapshot both hold,
    /// else full.
    pub fn outgoing(
        &self,
        id: &str,
        name: &str,
        replica_holds: &[String],
    ) -> Result<OutgoingSnapshot> {
        let vol = self.get(id)?;
        let snap = vol
            .replication_snapshots
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| {
                Error::FailedPrecondition(format!("volume {id} has no replication snapshot {name}"))
            })?;
        let dir = self.replication_dir(id);
        let path = dir.join(name).join(SNAPSHOT_SUBVOLUME);
        if !path.is_dir() {
            return Err(Error::FailedPrecondition(format!(
                "replication snapshot {name} of {id} is gone from the pool"
            )));
        }
        let seq = seq_of(name);
        let parent = names_in(&dir)?
            .into_iter()
            .rev()
            .filter(|n| seq_of(n) < seq && replica_holds.contains(n))
            .find(|n| dir.join(n).join(SNAPSHOT_SUBVOLUME).is_dir())
            .map(|n| {
                let path = dir.join(&n).join(SNAPSHOT_SUBVOLUME);
                (n, path)
            });
        Ok(OutgoingSnapshot {
            volume: vol,
            name: name.to_string(),
            taken_at: snap.taken_at,
            path,
            parent,
        })
    }

    /// Takes a replication snapshot and prepares the stream for a replica holding
    /// `replica_holds` (the one-shot `vol replicate`).
    pub fn take_and_prepare(
        &self,
        volume: &str,
        replica_holds: &[String],
    ) -> Result<OutgoingSnapshot> {
        let id = self.resolve(volume)?.id;
        let snap = self.take_replication_snapshot(&id)?;
        self.outgoing(&id, &snap.name, replica_holds)
    }

    /// Records that peer `node_id` acknowledged snapshot `snapshot` of volume `id`.
    pub fn record_replica_ack(
        &self,
        id: &str,
        node_id: &str,
        snapshot: &str,
        bytes_sent: u64,
    ) -> Result<()> {
        let _guard = self.claim_patiently(id)?;
        let mut rec = self.get(id)?;
        let ack = ReplicaAck {
            node_id: node_id.to_string(),
            snapshot: snapshot.to_string(),
            bytes_sent,
            acknowledged_at: now(),
        };
        match rec.replicas.iter_mut().find(|r| r.node_id == node_id) {
            Some(r) => *r = ack,
            None => rec.replicas.push(ack),
        }
        self.store.put(&rec)
    }

    /// Deletes the replication snapshots of volume `id` that no replica needs: keeps
    /// the newest, each one a replica acknowledged, and those in `keep` (streams in
    /// flight).
    pub fn prune_replication(&self, id: &str, keep: &[String]) -> Result<()> {
        let _guard = self.claim_patiently(id)?;
        let mut rec = self.get(id)?;
        let dir = self.replication_dir(id);
        let names = names_in(&dir)?;
        let newest = names.last().cloned();
        // After a promotion, the newest snapshot of the older generation is the one
        // the other copies most likely hold: kept until each replica node has
        // acknowledged a snapshot of this generation, so they catch up incrementally.
        let generation = rec.generation.max(1);
        let of_generation = |n: &str| parse_snapshot_name(n).map(|(_, g)| g);
        let all_caught_up = rec.replication.as_ref().is_none_or(|spec| {
            spec.nodes.iter().all(|node| {
                rec.replicas
                    .iter()
                    .any(|a| &a.node_id == node && of_generation(&a.snapshot) == Some(generation))
            })
        });
        let inherited = names
            .iter()
            .rfind(|n| of_generation(n).is_some_and(|g| g < generation))
            .cloned();
        let mut removed = Vec::new();
        for name in &names {
            let needed = Some(name) == newest.as_ref()
                || keep.contains(name)
                || (!all_caught_up && Some(name) == inherited.as_ref())
                || rec.replicas.iter().any(|r| &r.snapshot == name);
            if !needed {
                self.remove_snapshot_dir(&dir.join(name))?;
                removed.push(name.clone());
            }
        }
        if !removed.is_empty() || rec.replication_snapshots.len() != names.len() - removed.len() {
            rec.replication_snapshots
                .retain(|s| names.contains(&s.name) && !removed.contains(&s.name));
            self.store.put(&rec)?;
            tracing::debug!(volume.id = %id, ?removed, "replication snapshots pruned");
        }
        Ok(())
    }

    /// The kind of replication stream this node's pool makes of what it holds itself
    /// (and takes for every kind of volume).
    pub fn stream_format(&self) -> StreamFormat {
        match self.pool.backend() {
            PoolBackend::Btrfs { .. } => StreamFormat::Btrfs,
            PoolBackend::Plain => StreamFormat::Chunk,
        }
    }

    /// The kind of replication stream volume `vol` is shipped with: a chunk diff for
    /// an image on the host's filesystem, the pool's own kind otherwise.
    pub fn stream_format_of(&self, vol: &VolumeRecord) -> StreamFormat {
        match self.pool.layout_of(vol) {
            crate::model::Layout::HostImage => StreamFormat::Chunk,
            _ => self.stream_format(),
        }
    }

    /// Whether this node takes a stream of `format` for a volume of `kind`: its pool's
    /// own, or chunk diffs of loop volumes where it keeps host images (what such a
    /// replica becomes when promoted, so that it goes on shipping chunk diffs).
    pub(super) fn takes(&self, format: StreamFormat, kind: VolumeKind) -> bool {
        format == self.stream_format()
            || (format == StreamFormat::Chunk
                && kind == VolumeKind::Loop
                && self.pool.host_images().is_some())
    }

    /// A host image's replication snapshot is a full copy into the pool: NO_SPACE
    /// unless the pool has room for the blocks the image holds.
    pub(super) fn room_for_replication_copy(&self, vol: &VolumeRecord) -> Result<()> {
        if self.pool.layout_of(vol) != crate::model::Layout::HostImage {
            return Ok(());
        }
        let image = self.pool.image_path(&vol.id);
        let held = std::fs::metadata(&image)
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .ctx(|| format!("stat {}", image.display()))?;
        self.pool
            .available_for(held, "replication snapshot")
            .map(drop)
    }

    /// Removes a snapshot's tree: a subvolume, or a directory (a chunk-diff copy).
    pub(super) fn remove_tree(&self, path: &Path) -> Result<()> {
        let subvolume = matches!(self.pool.backend(), PoolBackend::Btrfs { .. })
            && self
                .host
                .btrfs
                .is_subvolume(path)
                .ctx(|| format!("examine {}", path.display()))?;
        if subvolume {
            self.host.btrfs.delete_subvolume(path)
        } else {
            std::fs::remove_dir_all(path).ctx(|| format!("remove {}", path.display()))
        }
    }

    /// Removes a snapshot directory and the read-only tree in it.
    pub(crate) fn remove_snapshot_dir(&self, seq_dir: &Path) -> Result<()> {
        let sub = seq_dir.join(SNAPSHOT_SUBVOLUME);
        if sub.exists() {
            self.remove_tree(&sub)?;
        }
        match std::fs::remove_dir(seq_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", seq_dir.display()), e)),
        }
    }

    /// Removes volume `id`'s replication snapshots (the volume is being deleted).
    pub(crate) fn release_replication(&self, id: &str) -> Result<()> {
        let dir = self.replication_dir(id);
        for name in names_in(&dir)? {
            self.remove_snapshot_dir(&dir.join(name))?;
        }
        // Anything else (an incoming directory carried over by a promotion).
        if dir.exists() {
            self.clear_incoming(&dir)?;
        }
        match std::fs::remove_dir(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", dir.display()), e)),
        }
    }

    /// Starts the send stream of `snap` (incremental when it has a parent).
    pub fn send_stream(&self, snap: &OutgoingSnapshot) -> Result<Box<dyn SendStream>> {
        let parent = snap.parent.as_ref().map(|p| p.1.clone());
        match self.stream_format_of(&snap.volume) {
            StreamFormat::Btrfs => self.host.btrfs.send(&snap.path, parent.as_deref()),
            StreamFormat::Chunk => {
                let (reader, writer) =
                    std::io::pipe().ctx(|| "create a pipe for the chunk-diff stream".into())?;
                let new = snap.path.clone();
                let worker = std::thread::Builder::new()
                    .name("chunkdiff-send".into())
                    .spawn(move || crate::chunkdiff::send(&new, parent.as_deref(), writer))
                    .ctx(|| "start the chunk-diff sender".into())?;
                Ok(Box::new(ChunkSend { reader, worker }))
            }
        }
    }
}
