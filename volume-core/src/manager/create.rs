//! Creating a volume: its capacity, an existing one of the same name, the source of a
//! restore or clone (frozen while it is copied), the record, the storage.

use super::*;

impl VolumeManager {
    /// Picks the size to provision for a request, or says why none fits.
    pub fn choose_capacity(&self, req: &CreateRequest) -> Result<u64> {
        let (required, limit) = (req.required_bytes, req.limit_bytes);
        if limit != 0 && required > limit {
            return Err(Error::InvalidArgument(format!(
                "required_bytes {required} exceeds limit_bytes {limit}"
            )));
        }
        let mut size = match (required, limit) {
            (0, 0) => DEFAULT_CAPACITY,
            (0, l) => DEFAULT_CAPACITY.min(l),
            (r, _) => r,
        };
        let min = match (req.params.kind, req.params.fs) {
            (VolumeKind::Loop, Some(fs)) => fs.min_bytes(),
            _ => 1 << 20,
        };
        size = round_up(size.max(min), 1 << 20);
        if limit != 0 && size > limit {
            return Err(Error::OutOfRange(format!(
                "the smallest {} volume is {size} bytes, above limit_bytes {limit}",
                req.params.kind
            )));
        }
        Ok(size)
    }

    /// Creates a volume, or returns the existing one of the same name when it is
    /// compatible (CreateVolume is idempotent by name).
    pub fn create(&self, req: &CreateRequest) -> Result<VolumeRecord> {
        validate_name(&req.name)?;
        if req.block && req.params.kind != VolumeKind::Loop {
            return Err(Error::InvalidArgument(
                "block access needs kind=loop; a directory volume has no device".into(),
            ));
        }
        crate::mutable::validate(&req.mutable_parameters, req.params.kind, &self.pool)?;
        if let Some(r) = req.params.replication
            && req.replica_nodes.len() + 1 != r.copies as usize
        {
            return Err(Error::InvalidArgument(format!(
                "replicas={} needs {} replica node(s) placed by the controller, {} were given \
                 (inline ephemeral volumes and the volume plugin do not replicate)",
                r.copies,
                r.copies - 1,
                req.replica_nodes.len()
            )));
        }
        let _guard = self.inflight.try_claim([format!("name:{}", req.name)])?;
        let mut capacity = self.choose_capacity(req)?;
        // A clone's source must not be unstaged (thawed, detached) while it is copied.
        let _source_guard = match &req.source {
            Some(ContentSource::Volume(vid)) => Some(self.claim(vid)?),
            _ => None,
        };
        // A restore or clone is at least as large as what it copies.
        let origin = self.resolve_source(req)?;
        if let Some((_, _, size)) = &origin {
            if req.limit_bytes != 0 && *size > req.limit_bytes {
                return Err(Error::OutOfRange(format!(
                    "the source is {size} bytes, above limit_bytes {}",
                    req.limit_bytes
                )));
            }
            capacity = capacity.max(*size);
        }
        if let Some(existing) = self.store.get_by_name::<VolumeRecord>(&req.name)? {
            match existing.state {
                VolumeState::Ready => return compatible(existing, req),
                // Left by a crash that reconcile has not cleared: finish it first.
                VolumeState::Creating | VolumeState::Deleting => self.forget(&existing)?,
            }
        }
        let layout = self.pool.choose_layout(
            req.params.kind,
            req.params.layout,
            req.params.replication.is_some(),
            crate::mutable::compresses(&req.mutable_parameters),
        )?;
        let id = new_id(VOLUME_PREFIX);
        let mut rec = VolumeRecord {
            id: id.clone(),
            name: req.name.clone(),
            kind: req.params.kind,
            fs: req.params.fs,
            capacity,
            state: VolumeState::Creating,
            parameters: req.params.normalized.clone(),
            created_at: now(),
            content_source: req.source.clone(),
            fs_size: origin.as_ref().map(|o| o.1).unwrap_or(0),
            layout: Some(layout),
            generation: 1,
            replication: req.params.replication.map(|r| ReplicationSpec {
                copies: r.copies,
                interval_secs: r.interval_secs,
                nodes: req.replica_nodes.clone(),
            }),
            ..Default::default()
        };
        if origin.is_some() && req.params.kind == VolumeKind::Dir && req.params.layout.is_none() {
            // A directory clone keeps what its origin hands new files (found once made).
            rec.layout = None;
        }
        let _id_guard = self.claim(&id)?;
        // Persist the intent first: a crash from here on is rolled back at restart.
        self.store.put(&rec)?;
        let result = match &origin {
            None => self.pool.allocate(&mut rec, None),
            Some((src, _, _)) => {
                // Any wait for space happens before the source is frozen, never while
                // its writers are blocked.
                self.pool
                    .available_for_layout(layout, rec.capacity, "requested")
                    .and_then(|_| {
                        self.with_source_frozen(req, || {
                            self.pool.allocate_without_waiting(&mut rec, Some(src))
                        })
                    })
            }
        }
        .and_then(|()| crate::mutable::apply(&self.pool, &mut rec, &req.mutable_parameters));
        if let Err(e) = result {
            if let Err(cleanup) = self.pool.release(&id) {
                tracing::warn!(volume.id = %id, error = %cleanup, "cleanup after failed create");
            }
            if let Err(store_err) = self.store.remove::<VolumeRecord>(&id) {
                tracing::warn!(volume.id = %id, error = %store_err, "remove record of failed create");
            }
            return Err(e);
        }
        rec.mutable_parameters = req.mutable_parameters.clone();
        rec.state = VolumeState::Ready;
        self.store.put(&rec)?;
        tracing::info!(volume.id = %id, volume.name = %rec.name, kind = %rec.kind, capacity, "created volume");
        Ok(rec)
    }

    /// For a restore or clone: the directory to copy, the filesystem size it holds
    /// and the smallest capacity it fits in.
    pub(super) fn resolve_source(
        &self,
        req: &CreateRequest,
    ) -> Result<Option<(PathBuf, u64, u64)>> {
        let (kind, fs, path, fs_size, size) = match &req.source {
            None => return Ok(None),
            Some(ContentSource::Snapshot(sid)) => {
                let snap = self.get_snapshot(sid)?;
                (
                    snap.kind,
                    snap.fs,
                    self.pool.snapshot_dir(sid),
                    snap.fs_size,
                    snap.size_bytes,
                )
            }
            Some(ContentSource::Volume(vid)) => {
                let vol = self.get(vid)?;
                (
                    vol.kind,
                    vol.fs,
                    self.pool.volume_dir(vid),
                    vol.filesystem_bytes(),
                    vol.capacity,
                )
            }
        };
        if kind != req.params.kind || fs != req.params.fs {
            return Err(Error::InvalidArgument(format!(
                "the source is kind={kind} fsType={}, the request asks for kind={} fsType={}",
                fs.map(|f| f.as_str()).unwrap_or("-"),
                req.params.kind,
                req.params.fs.map(|f| f.as_str()).unwrap_or("-"),
            )));
        }
        Ok(Some((path, fs_size, size)))
    }

    /// Runs `f` with a cloned source volume's filesystem frozen when it is a staged,
    /// mounted loop volume, so the copy is consistent.
    pub(super) fn with_source_frozen<T>(
        &self,
        req: &CreateRequest,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        match &req.source {
            Some(ContentSource::Volume(vid)) => {
                let vol = self.get(vid)?;
                self.with_frozen(&[vol], f)
            }
            _ => f(),
        }
    }

    /// Runs `f` with the filesystems of the mounted loop volumes among `vols` frozen;
    /// always thaws what it froze.
    pub(crate) fn with_frozen<T>(
        &self,
        vols: &[VolumeRecord],
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        for v in vols {
            // A raw block device has no filesystem to freeze: only a reflink (one
            // atomic step) copies its host image consistently while it is in use.
            let raw_in_use = v.staging.as_ref().is_some_and(|s| s.block);
            if raw_in_use
                && self.pool.layout_of(v) == crate::model::Layout::HostImage
                && !self.pool.host_reflinks()
            {
                return Err(Error::FailedPrecondition(format!(
                    "volume {} is in use as a raw block device and its image is on a host \
                     filesystem without reflinks, where a copy taken now would be torn: \
                     unstage it first (or create such volumes with layout=pool-image)",
                    v.id
                )));
            }
        }
        let mut frozen = Vec::new();
        let mut result = Ok(());
        for v in vols {
            if let (VolumeKind::Loop, Some(stage)) = (v.kind, &v.staging)
                && !stage.block
            {
                match self.host.mounter.freeze(&stage.path) {
                    Ok(()) => frozen.push(stage.path.clone()),
                    Err(e) => {
                        result = Err(Error::io(format!("freeze {}", stage.path.display()), e));
                        break;
                    }
                }
            }
        }
        let out = result.and_then(|()| f());
        for path in frozen.iter().rev() {
            if let Err(e) = self.host.mounter.thaw(path) {
                tracing::error!(path = %path.display(), error = %e, "thaw failed");
            }
        }
        out
    }
}

fn compatible(existing: VolumeRecord, req: &CreateRequest) -> Result<VolumeRecord> {
    let conflict = |reason: String| {
        Err(Error::NameConflict {
            name: req.name.clone(),
            reason,
        })
    };
    if existing.kind != req.params.kind {
        return conflict(format!("existing kind is {}", existing.kind));
    }
    if existing.fs != req.params.fs {
        return conflict(format!("existing fsType is {:?}", existing.fs));
    }
    for key in [crate::params::LAYERS, crate::params::OVERLAY] {
        if existing.parameters.get(key) != req.params.normalized.get(key) {
            return conflict(format!(
                "existing {key} is {:?}",
                existing.parameters.get(key)
            ));
        }
    }
    if let Some(asked) = req.params.layout
        && existing.layout.is_some_and(|l| l != asked)
    {
        return conflict(format!("existing layout is {:?}", existing.layout));
    }
    if existing.capacity < req.required_bytes {
        return conflict(format!("existing capacity is {} bytes", existing.capacity));
    }
    if req.limit_bytes != 0 && existing.capacity > req.limit_bytes {
        return conflict(format!("existing capacity is {} bytes", existing.capacity));
    }
    if existing.content_source != req.source {
        return conflict(format!(
            "existing content source is {:?}",
            existing.content_source
        ));
    }
    Ok(existing)
}
