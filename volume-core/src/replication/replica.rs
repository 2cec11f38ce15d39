//! The replica's side: what this node holds of a volume, receiving a stream into an
//! incoming directory and committing it, and removing replicas.

use super::*;

impl VolumeManager {
    /// What this node holds of volume `id`: the volume itself, a replica, or nothing.
    pub fn holding(&self, id: &str) -> Result<Holding> {
        if !is_valid_id(id) {
            return Err(Error::InvalidArgument(format!("{id:?} is not a volume id")));
        }
        if let Some(v) = self.store.get::<VolumeRecord>(id)? {
            return Ok(Holding::Primary {
                generation: v.generation.max(1),
                snapshots: names_in(&self.replication_dir(id))?,
            });
        }
        Ok(match self.store.get::<ReplicaRecord>(id)? {
            Some(r) => Holding::Replica {
                generation: r.generation.max(1),
                snapshots: r.snapshots.into_iter().map(|s| s.name).collect(),
            },
            None => Holding::Nothing,
        })
    }

    /// The names of the snapshots this node holds of volume `id` as a replica, oldest
    /// first (empty when it holds none).
    #[cfg(test)]
    pub(crate) fn replica_state(&self, id: &str) -> Result<Vec<String>> {
        Ok(match self.holding(id)? {
            Holding::Replica { snapshots, .. } => snapshots,
            _ => Vec::new(),
        })
    }

    /// Every replica this node holds.
    pub fn list_replicas(&self) -> Result<Vec<ReplicaRecord>> {
        self.store.list::<ReplicaRecord>()
    }

    /// Removes this node's replica of volume `id` (its primary deleted the volume,
    /// or no longer places a copy here). `up_to_generation`: only a replica of that
    /// generation or older (a stale primary cannot remove a newer copy). False when
    /// there was none.
    pub fn remove_replica(&self, id: &str, up_to_generation: Option<u64>) -> Result<bool> {
        if !is_valid_id(id) {
            return Err(Error::InvalidArgument(format!("{id:?} is not a volume id")));
        }
        let _guard = self.inflight().try_claim([format!("replica:{id}")])?;
        let Some(rec) = self.store.get::<ReplicaRecord>(id)? else {
            return Ok(false);
        };
        if let Some(g) = up_to_generation
            && rec.generation > g
        {
            return Err(Error::FailedPrecondition(format!(
                "replica of {id} has generation {}, newer than the caller's {g}",
                rec.generation
            )));
        }
        let dir = self.replica_dir(id);
        if dir.exists() {
            self.clear_incoming(&dir)?;
            for name in names_in(&dir)? {
                self.remove_snapshot_dir(&dir.join(name))?;
            }
            std::fs::remove_dir(&dir).ctx(|| format!("remove {}", dir.display()))?;
        }
        self.store.remove::<ReplicaRecord>(id)?;
        tracing::info!(volume.id = %id, volume.name = %rec.name, "replica removed");
        Ok(true)
    }

    /// Starts applying a replication stream described by `header`: checks it, clears
    /// what an earlier interrupted receive of this volume left, and starts the receiver
    /// in a fresh `incoming-<n>` directory. Feed it with [`IncomingSnapshot::write`],
    /// then [`IncomingSnapshot::commit`]; dropped before commit, it removes everything
    /// it made.
    pub fn begin_receive(self: &Arc<Self>, header: IncomingHeader) -> Result<IncomingSnapshot> {
        if !self.takes(header.format, header.kind) {
            return Err(Error::FailedPrecondition(format!(
                "the sender streams {} but this node's pool takes {} streams for a {} volume \
                 (both pools must be btrfs, or neither; a btrfs pool that keeps host \
                 images also takes chunk diffs of loop volumes)",
                header.format.as_str(),
                self.stream_format().as_str(),
                header.kind
            )));
        }
        if !is_valid_id(&header.volume_id) {
            return Err(Error::InvalidArgument(format!(
                "{:?} is not a volume id",
                header.volume_id
            )));
        }
        validate_name(&header.name)?;
        if parse_snapshot_name(&header.snapshot).is_none()
            || header
                .parent
                .as_deref()
                .is_some_and(|p| parse_snapshot_name(p).is_none())
        {
            return Err(Error::InvalidArgument(
                "snapshot and parent names must be <seq>-g<generation>".into(),
            ));
        }
        let newest_generation = parse_snapshot_name(&header.snapshot)
            .map(|(_, g)| g)
            .unwrap_or(0)
            .max(header.generation);
        if newest_generation > crate::manager::failover::max_plausible_generation() {
            return Err(Error::InvalidArgument(format!(
                "generation {newest_generation} of {} is beyond any promotion's clock",
                header.volume_id
            )));
        }
        let guard = self
            .inflight()
            .try_claim([format!("replica:{}", header.volume_id)])?;
        if let Some(own) = self.store.get::<VolumeRecord>(&header.volume_id)? {
            return Err(Error::FailedPrecondition(format!(
                "volume {} is a volume of this node (generation {}), not a replica; \
                 the sender has generation {}",
                header.volume_id,
                own.generation.max(1),
                header.generation
            )));
        }
        if let Some(r) = self.store.get::<ReplicaRecord>(&header.volume_id)?
            && r.generation > header.generation
        {
            return Err(Error::FailedPrecondition(format!(
                "stale primary: this replica of {} has generation {}, the sender {}",
                header.volume_id, r.generation, header.generation
            )));
        }
        let dir = self.replica_dir(&header.volume_id);
        std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        let id = header.volume_id.clone();
        let result = self.open_incoming(header, dir, guard);
        if result.is_err() {
            // A refused stream leaves nothing, not even the directory it would use.
            self.drop_unused_replica_dir(&id);
        }
        result
    }

    /// The rest of [`Self::begin_receive`], once the replica directory exists.
    pub(super) fn open_incoming(
        self: &Arc<Self>,
        header: IncomingHeader,
        dir: PathBuf,
        guard: crate::guard::OperationGuard,
    ) -> Result<IncomingSnapshot> {
        self.clear_incoming(&dir)?;
        if dir.join(&header.snapshot).exists() {
            return Err(Error::FailedPrecondition(format!(
                "replica of {} already holds snapshot {}",
                header.volume_id, header.snapshot
            )));
        }
        if let Some(p) = &header.parent
            && !dir.join(p).join(SNAPSHOT_SUBVOLUME).exists()
        {
            return Err(Error::FailedPrecondition(format!(
                "replica of {} does not hold parent snapshot {p}",
                header.volume_id
            )));
        }
        let incoming = dir.join(format!("{INCOMING_PREFIX}{}", new_id("")));
        std::fs::create_dir(&incoming).ctx(|| format!("create {}", incoming.display()))?;
        let mut rx = IncomingSnapshot {
            mgr: Arc::clone(self),
            header,
            dir,
            incoming,
            sink: None,
            hasher: blake3::Hasher::new(),
            length: 0,
            done: false,
            _guard: guard,
        };
        rx.sink = Some(match rx.header.format {
            StreamFormat::Btrfs => {
                let parent_root = rx
                    .header
                    .parent
                    .as_ref()
                    .map(|p| rx.dir.join(p).join(SNAPSHOT_SUBVOLUME));
                let parent_uuids = match &parent_root {
                    Some(p) => self.host.btrfs.subvolume_uuids(p)?,
                    None => Vec::new(),
                };
                let expect = crate::os::sendstream::Expect {
                    subvolume: SNAPSHOT_SUBVOLUME.to_string(),
                    parent_uuids,
                    parent_root,
                };
                self.host.btrfs.receive(&rx.incoming, expect)?
            }
            StreamFormat::Chunk => {
                // The stream applies to a copy of the parent (or an empty tree).
                let target = rx.incoming.join(SNAPSHOT_SUBVOLUME);
                match &rx.header.parent {
                    Some(p) => self
                        .host
                        .copier
                        .copy_tree(&rx.dir.join(p).join(SNAPSHOT_SUBVOLUME), &target)?,
                    None => std::fs::create_dir(&target)
                        .ctx(|| format!("create {}", target.display()))?,
                }
                let (reader, writer) =
                    std::io::pipe().ctx(|| "create a pipe for the chunk-diff stream".into())?;
                let worker = std::thread::Builder::new()
                    .name("chunkdiff-apply".into())
                    .spawn(move || crate::chunkdiff::apply(reader, &target))
                    .ctx(|| "start the chunk-diff receiver".into())?;
                Box::new(ChunkReceive {
                    writer: Some(writer),
                    worker: Some(worker),
                })
            }
        });
        Ok(rx)
    }

    /// Removes the replica directory of volume `id` if a refused or discarded stream
    /// made it and nothing else is in it (no replica of `id` is recorded here).
    pub(super) fn drop_unused_replica_dir(&self, id: &str) {
        if !matches!(self.store.get::<ReplicaRecord>(id), Ok(None)) {
            return;
        }
        let dir = self.replica_dir(id);
        match std::fs::remove_dir(&dir) {
            Ok(()) => tracing::debug!(volume.id = %id, "removed empty replica directory"),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTEMPTY)) => {}
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "remove empty replica directory")
            }
        }
    }

    /// Removes what cut-off receives of volume `id` left (`incoming-*`).
    pub(crate) fn clear_incoming_of(&self, id: &str) -> Result<()> {
        let dir = self.replica_dir(id);
        if dir.exists() {
            self.clear_incoming(&dir)?;
        }
        Ok(())
    }

    /// Removes `incoming-*` directories under a replica directory, with any partial
    /// subvolume in them.
    pub(super) fn clear_incoming(&self, dir: &Path) -> Result<()> {
        for e in std::fs::read_dir(dir).ctx(|| format!("read {}", dir.display()))? {
            let e = e.ctx(|| format!("read {}", dir.display()))?;
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(INCOMING_PREFIX))
            {
                self.remove_incoming(&e.path())?;
            }
        }
        Ok(())
    }

    pub(super) fn remove_incoming(&self, incoming: &Path) -> Result<()> {
        if let Ok(entries) = std::fs::read_dir(incoming) {
            for e in entries.flatten() {
                self.remove_tree(&e.path())?;
            }
        }
        match std::fs::remove_dir(incoming) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", incoming.display()), e)),
        }
    }

    /// Which received snapshots of replica `rec` to keep: the newest [`REPLICA_KEEPS`]
    /// of the lineage ending in `newest`. Snapshots of an older generation newer than
    /// `newest`'s parent were never part of the new primary's history: they are
    /// dropped with a warning. Only the record changes here; [`Self::remove_unrecorded`]
    /// removes the directories once the record is stored.
    pub(super) fn prune_replica(
        &self,
        rec: &mut ReplicaRecord,
        newest: &str,
        parent: Option<&str>,
    ) {
        let (_, new_generation) = parse_snapshot_name(newest).unwrap_or((0, 0));
        let parent_seq = parent.map(seq_of).unwrap_or(0);
        let mut keep: Vec<String> = Vec::new();
        for s in rec.snapshots.iter().rev() {
            let (seq, generation) = parse_snapshot_name(&s.name).unwrap_or((0, 0));
            let off_lineage = s.name != newest && generation < new_generation && seq > parent_seq;
            if off_lineage {
                tracing::warn!(volume.id = %rec.id, snapshot = %s.name, "dropping a replica snapshot the new primary never had (taken by the primary before a failover)");
            } else if keep.len() < REPLICA_KEEPS {
                keep.push(s.name.clone());
            }
        }
        rec.snapshots.retain(|s| keep.contains(&s.name));
    }

    /// Removes the snapshot directories of replica `rec` that its (stored) record does
    /// not list. A failure leaves a directory that the next call removes.
    pub(super) fn remove_unrecorded(&self, rec: &ReplicaRecord) {
        let dir = self.replica_dir(&rec.id);
        let names = match names_in(&dir) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(volume.id = %rec.id, error = %e, "list replica snapshots");
                return;
            }
        };
        for name in names {
            if rec.snapshots.iter().any(|s| s.name == name) {
                continue;
            }
            if let Err(e) = self.remove_snapshot_dir(&dir.join(&name)) {
                tracing::warn!(volume.id = %rec.id, snapshot = %name, error = %e, "remove old replica snapshot");
            }
        }
    }
}

/// A replication stream being applied on the replica. Never half-applied: the
/// received subvolume is moved into place (one rename) only after the receiver
/// succeeded and the stream's length and blake3 digest match the trailer. It may be
/// kept (with its receiver running) across a broken connection, so that the sender
/// resumes where the stream stopped.
#[derive(Debug)]
pub struct IncomingSnapshot {
    mgr: Arc<VolumeManager>,
    header: IncomingHeader,
    dir: PathBuf,
    incoming: PathBuf,
    sink: Option<Box<dyn ReceiveSink>>,
    hasher: blake3::Hasher,
    length: u64,
    done: bool,
    _guard: OperationGuard,
}

impl IncomingSnapshot {
    /// The stream's header.
    pub fn header(&self) -> &IncomingHeader {
        &self.header
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.length
    }

    /// blake3 of the bytes received so far (a resuming sender checks that its stream
    /// starts with them).
    pub fn prefix_digest(&self) -> [u8; 32] {
        *self.hasher.clone().finalize().as_bytes()
    }

    /// Passes the next bytes of the stream to the receiver.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.hasher.update(data);
        self.length += data.len() as u64;
        match &mut self.sink {
            Some(sink) => sink
                .write_all(data)
                .ctx(|| "write to the stream's receiver".into()),
            None => Err(Error::FailedPrecondition("stream already finished".into())),
        }
    }

    /// Finishes the stream: the receiver must succeed and `length` and `digest` (the
    /// sender's blake3 of the whole stream) must match what arrived; then the snapshot
    /// is moved into place and recorded, and older snapshots are pruned.
    pub fn commit(mut self, digest: &[u8], length: u64) -> Result<ReplicaSnapshot> {
        let sink = self
            .sink
            .take()
            .ok_or_else(|| Error::FailedPrecondition("stream already finished".into()))?;
        sink.finish()?;
        if length != self.length {
            return Err(Error::StreamMismatch(format!(
                "{} bytes arrived, the sender sent {length}",
                self.length
            )));
        }
        if self.hasher.finalize().as_bytes().as_slice() != digest {
            return Err(Error::StreamMismatch("blake3 digest differs".into()));
        }
        let received = self.incoming.join(SNAPSHOT_SUBVOLUME);
        let entries = std::fs::read_dir(&self.incoming)
            .ctx(|| format!("read {}", self.incoming.display()))?
            .count();
        if !received.is_dir() || entries != 1 {
            return Err(Error::StreamMismatch(format!(
                "the stream did not hold exactly the subvolume {SNAPSHOT_SUBVOLUME}"
            )));
        }
        // On disk before it is acknowledged: `btrfs receive` commits its metadata, but
        // file data reaches the disk on a commit only with `flushoncommit`; a replica
        // that lost power after acknowledging could hold the record of a snapshot
        // whose files are incomplete. Then the rename, then its directory.
        sync_filesystem(&self.incoming)?;
        let target = self.dir.join(&self.header.snapshot);
        std::fs::rename(&self.incoming, &target)
            .ctx(|| format!("move {} to {}", self.incoming.display(), target.display()))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .ctx(|| format!("sync {}", self.dir.display()))?;
        let mgr = Arc::clone(&self.mgr);
        let h = &self.header;
        let mut rec = mgr
            .store
            .get::<ReplicaRecord>(&h.volume_id)?
            .unwrap_or_else(|| ReplicaRecord {
                id: h.volume_id.clone(),
                ..ReplicaRecord::default()
            });
        rec.name = h.name.clone();
        rec.kind = h.kind;
        rec.fs = h.fs;
        rec.capacity = h.capacity;
        rec.source_node_id = h.source_node_id.clone();
        rec.generation = rec.generation.max(h.generation);
        if h.spec.is_some() {
            rec.spec = h.spec.clone();
        }
        let snap = ReplicaSnapshot {
            name: h.snapshot.clone(),
            parent: h.parent.clone(),
            stream_bytes: self.length,
            received_at: now(),
            taken_at: h.taken_at,
        };
        rec.snapshots.push(snap.clone());
        self.done = true;
        mgr.prune_replica(&mut rec, &h.snapshot, h.parent.as_deref());
        if let Err(e) = mgr.store.put(&rec) {
            if let Err(undo) = mgr.remove_incoming(&target) {
                tracing::warn!(path = %target.display(), error = %undo, "remove unrecorded replica snapshot");
            }
            return Err(e);
        }
        // The record first, then the directories it no longer lists.
        mgr.remove_unrecorded(&rec);
        tracing::info!(volume.id = %h.volume_id, snapshot = %h.snapshot, parent = ?h.parent, bytes = self.length, "replica snapshot applied");
        Ok(snap)
    }
}

impl Drop for IncomingSnapshot {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Stop the receiver first, so the partial subvolume is no longer written.
        drop(self.sink.take());
        if let Err(e) = self.mgr.remove_incoming(&self.incoming) {
            tracing::warn!(path = %self.incoming.display(), error = %e, "remove failed incoming replica");
        } else {
            tracing::info!(volume.id = %self.header.volume_id, snapshot = %self.header.snapshot, "replication stream discarded");
        }
        self.mgr.drop_unused_replica_dir(&self.header.volume_id);
    }
}
