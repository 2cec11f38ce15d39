//! The volume manager: the controller-side operations (create, delete, list, get,
//! capacity) over a pool and the metadata store. Node-side operations live in
//! [`crate::node`], recovery after a restart in [`crate::reconcile`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::guard::{InFlight, OperationGuard};
use crate::model::{
    ContentSource, PoolUsage, ReplicationSpec, SnapshotRecord, VolumeHealth, VolumeKind,
    VolumeRecord, VolumeState,
};
use crate::os::Host;
use crate::params::VolumeParams;
use crate::pool::Pool;
use crate::size::round_up;
use crate::store::Store;

/// Size of a volume whose request names no capacity.
pub const DEFAULT_CAPACITY: u64 = 1 << 30;
/// Longest volume name accepted (CSI COs use up to 128 bytes).
pub const MAX_NAME_LEN: usize = 128;
pub(crate) use crate::ids::new_id;
pub use crate::ids::{GROUP_PREFIX, SNAPSHOT_PREFIX, VOLUME_PREFIX, has_id_shape, is_valid_id};

/// A request to create a volume.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// The CO's name, the idempotency key.
    pub name: String,
    /// Minimum bytes (0: unspecified).
    pub required_bytes: u64,
    /// Maximum bytes (0: unlimited).
    pub limit_bytes: u64,
    /// Validated parameters.
    pub params: VolumeParams,
    /// Restore from a snapshot or clone a volume.
    pub source: Option<ContentSource>,
    /// Mutable parameters to apply at creation (VolumeAttributesClass).
    pub mutable_parameters: BTreeMap<String, String>,
    /// Some capability asks for raw block access (loop volumes only).
    pub block: bool,
    /// Nodes chosen to hold the other copies of a replicated volume.
    pub replica_nodes: Vec<String>,
}

impl CreateRequest {
    /// A request for an empty volume with no mutable parameters.
    pub fn new(
        name: impl Into<String>,
        required_bytes: u64,
        limit_bytes: u64,
        params: VolumeParams,
    ) -> Self {
        CreateRequest {
            name: name.into(),
            required_bytes,
            limit_bytes,
            params,
            source: None,
            mutable_parameters: BTreeMap::new(),
            block: false,
            replica_nodes: Vec::new(),
        }
    }
}

/// This node, as the manager needs to know it.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// The node id (ControllerPublish targets, topology).
    pub node_id: String,
    /// The daemon's state directory (metadata, pool image, its own mount points).
    pub state_dir: PathBuf,
    /// Where inline ephemeral volumes are staged.
    pub ephemeral_dir: PathBuf,
    /// Where volumes attached into containers are staged.
    pub attach_dir: PathBuf,
    /// The layer store's directory of unpacked layers (`<key>/` each): the lower
    /// directories of image volumes.
    pub layers_dir: PathBuf,
    /// The `stowage-overlay` program, which mounts image volumes with `overlay=fuse`.
    pub overlay_program: PathBuf,
}

/// Controller and node operations on the volumes of one pool.
#[derive(Debug)]
pub struct VolumeManager {
    pub(crate) store: Store,
    pub(crate) pool: Pool,
    pub(crate) host: Host,
    pub(crate) node: NodeIdentity,
    /// The state directory and the pool root, as given and resolved: no caller's
    /// staging or target path may lie inside or above them.
    pub(crate) owned_roots: Vec<PathBuf>,
    inflight: InFlight,
}

/// Checks a volume name: 1 to 128 bytes, no control characters or path separators.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidArgument("volume name is empty".into()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::InvalidArgument(format!(
            "volume name is {} bytes, the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if name == "." || name == ".." || name.chars().any(|c| c == '/' || c.is_control()) {
        return Err(Error::InvalidArgument(format!(
            "volume name {name:?} contains '/', a control character, or is a dot name"
        )));
    }
    if name.chars().any(is_bidi_control) {
        return Err(Error::InvalidArgument(format!(
            "volume name {name:?} contains a text direction control character"
        )));
    }
    if name.chars().all(|c| c.is_whitespace() || is_format_char(c)) {
        return Err(Error::InvalidArgument(format!(
            "volume name {name:?} has nothing visible in it"
        )));
    }
    Ok(())
}

/// Characters that reorder how text around them is shown (U+202A–U+202E,
/// U+2066–U+2069, U+200E, U+200F, U+061C): a name holding one can show as another.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// Unicode format characters (general category Cf): invisible on their own.
fn is_format_char(c: char) -> bool {
    matches!(c,
        '\u{00AD}'
        | '\u{0600}'..='\u{0605}'
        | '\u{061C}'
        | '\u{06DD}'
        | '\u{070F}'
        | '\u{0890}'..='\u{0891}'
        | '\u{08E2}'
        | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}'
        | '\u{110BD}'
        | '\u{110CD}'
        | '\u{13430}'..='\u{1343F}'
        | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0001}'
        | '\u{E0020}'..='\u{E007F}')
}

/// Seconds since the epoch (the clock records carry).
pub fn now() -> u64 {
    now_precise().0
}

/// Seconds and nanoseconds since the epoch.
pub(crate) fn now_precise() -> (u64, u32) {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs(), d.subsec_nanos()))
        .unwrap_or((0, 0))
}

impl VolumeManager {
    /// Builds a manager over an open pool and store. Call [`VolumeManager::reconcile`]
    /// before serving requests.
    pub fn new(mut store: Store, pool: Pool, host: Host, node: NodeIdentity) -> Self {
        store.mirror_into(pool.root().join(crate::store::RECORDS_DIR));
        let mut owned_roots = Vec::new();
        for root in [node.state_dir.as_path(), pool.root()] {
            for form in [root.to_path_buf(), root.canonicalize().unwrap_or_default()] {
                if form.is_absolute() && !owned_roots.contains(&form) {
                    owned_roots.push(form);
                }
            }
        }
        VolumeManager {
            store,
            pool,
            host,
            node,
            owned_roots,
            inflight: InFlight::default(),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node.node_id
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The in-flight operation set (for metrics).
    pub fn inflight(&self) -> &InFlight {
        &self.inflight
    }

    /// Claims a volume id for one operation; a concurrent claim gets [`Error::Busy`].
    pub fn claim(&self, id: &str) -> Result<OperationGuard> {
        self.inflight.try_claim([format!("id:{id}")])
    }

    /// The volume named or identified by `volume` (ids are tried first).
    pub fn resolve(&self, volume: &str) -> Result<VolumeRecord> {
        if is_valid_id(volume) {
            return self.get(volume);
        }
        match self.store.get_by_name::<VolumeRecord>(volume)? {
            Some(rec) if rec.state == VolumeState::Ready => Ok(rec),
            _ => Err(Error::VolumeNotFound(volume.to_string())),
        }
    }

    /// The snapshot named or identified by `snapshot`.
    pub fn resolve_snapshot(&self, snapshot: &str) -> Result<SnapshotRecord> {
        if has_id_shape(SNAPSHOT_PREFIX, snapshot) {
            return self.get_snapshot(snapshot);
        }
        match self.store.get_by_name::<SnapshotRecord>(snapshot)? {
            Some(s) if s.state == VolumeState::Ready => Ok(s),
            _ => Err(Error::SnapshotNotFound(snapshot.to_string())),
        }
    }

    /// The record of volume `id`, or [`Error::VolumeNotFound`].
    pub fn get(&self, id: &str) -> Result<VolumeRecord> {
        if !is_valid_id(id) {
            return Err(Error::VolumeNotFound(id.to_string()));
        }
        match self.store.get::<VolumeRecord>(id)? {
            Some(rec) if rec.state == VolumeState::Ready => Ok(rec),
            _ => Err(Error::VolumeNotFound(id.to_string())),
        }
    }

    /// Ready volumes with ids after `after` (a previous page's last id), at most `limit`.
    pub fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<VolumeRecord>> {
        let mut out = Vec::new();
        let mut cursor = after.map(str::to_string);
        // Skip records mid-create or mid-delete without shortening the page.
        while out.len() < limit {
            let want = limit - out.len();
            let batch = self
                .store
                .list_after::<VolumeRecord>(cursor.as_deref(), want)?;
            let Some(last) = batch.last() else { break };
            cursor = Some(last.id.clone());
            let n = batch.len();
            out.extend(batch.into_iter().filter(|r| r.state == VolumeState::Ready));
            if n < want {
                break;
            }
        }
        Ok(out)
    }

    /// Pool capacity for GetCapacity.
    pub fn capacity(&self) -> Result<PoolUsage> {
        // A pool that is gone or read-only has nothing to offer, whatever the
        // filesystem now under its path says.
        if self.pool.problem().is_some() {
            return Ok(PoolUsage::default());
        }
        self.pool.usage()
    }

    /// Capacity for GetCapacity of volumes with `params`: the host filesystem's free
    /// space (less the reserve) where they would be host images, the pool's otherwise.
    pub fn capacity_for(&self, params: &crate::params::VolumeParams) -> Result<PoolUsage> {
        // A layout this node does not offer: no room for such volumes here.
        let layout = match self.pool.choose_layout(
            params.kind,
            params.layout,
            params.replication.is_some(),
            false,
        ) {
            Ok(l) => l,
            Err(Error::InvalidArgument(_)) => return Ok(PoolUsage::default()),
            Err(e) => return Err(e),
        };
        if layout != crate::model::Layout::HostImage || self.pool.problem().is_some() {
            return self.capacity();
        }
        Ok(self.pool.host_usage()?.unwrap_or_default())
    }

    /// The pool's filesystem usage as statvfs of its path says, whatever is mounted
    /// there (liveness: the path answers).
    pub fn pool_reachable(&self) -> Result<PoolUsage> {
        self.pool.usage()
    }

    /// Why the pool cannot be used now (unmounted, read-only), if it cannot.
    pub fn pool_problem(&self) -> Option<String> {
        self.pool.problem()
    }

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

    /// How volume `rec`'s data sits on this node.
    pub fn layout_of(&self, rec: &VolumeRecord) -> crate::model::Layout {
        self.pool.layout_of(rec)
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
    fn resolve_source(&self, req: &CreateRequest) -> Result<Option<(PathBuf, u64, u64)>> {
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
    fn with_source_frozen<T>(
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

    /// The record of snapshot `id`, or [`Error::SnapshotNotFound`].
    pub fn get_snapshot(&self, id: &str) -> Result<SnapshotRecord> {
        if !has_id_shape(SNAPSHOT_PREFIX, id) {
            return Err(Error::SnapshotNotFound(id.to_string()));
        }
        match self.store.get::<SnapshotRecord>(id)? {
            Some(s) if s.state == VolumeState::Ready => Ok(s),
            _ => Err(Error::SnapshotNotFound(id.to_string())),
        }
    }

    /// Deletes volume `id`; a volume that does not exist is already deleted.
    pub fn delete(&self, id: &str) -> Result<()> {
        if !is_valid_id(id) {
            return Ok(());
        }
        self.release_vanished_before(id)?;
        let _guard = self.claim(id)?;
        let Some(mut rec) = self.store.get::<VolumeRecord>(id)? else {
            return Ok(());
        };
        if let Some(m) = rec.container_mounts.first() {
            // Attached into a container: name what to detach, not our staging path.
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is attached into process {} at {}; detach it first \
                 (vol detach {} --pid {} --target {})",
                m.pid,
                m.target.display(),
                rec.name,
                m.pid,
                m.target.display()
            )));
        }
        if rec.in_use() {
            let place = rec
                .staging
                .as_ref()
                .map(|s| s.path.display().to_string())
                .or_else(|| {
                    rec.publications
                        .first()
                        .map(|p| p.target.display().to_string())
                })
                .unwrap_or_default();
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is still staged or published at {place}"
            )));
        }
        rec.state = VolumeState::Deleting;
        self.store.put(&rec)?;
        self.forget(&rec)?;
        tracing::info!(volume.id = %id, volume.name = %rec.name, "deleted volume");
        Ok(())
    }

    /// Removes a volume's storage and then its record.
    pub(crate) fn forget(&self, rec: &VolumeRecord) -> Result<()> {
        self.release_replication(&rec.id)?;
        self.pool.release(&rec.id)?;
        self.store.remove::<VolumeRecord>(&rec.id)
    }

    /// Removes a snapshot's storage and then its record.
    pub(crate) fn forget_snapshot(&self, snap: &SnapshotRecord) -> Result<()> {
        self.pool.release_snapshot(&snap.id)?;
        self.store.remove::<SnapshotRecord>(&snap.id)
    }

    /// Controller-side health: is the volume's storage where the record says?
    pub fn controller_health(&self, rec: &VolumeRecord) -> VolumeHealth {
        let path = match rec.kind {
            VolumeKind::Dir | VolumeKind::Image => self.pool.volume_dir(&rec.id),
            VolumeKind::Loop => self.pool.image_path(&rec.id),
        };
        match std::fs::metadata(&path) {
            Ok(_) => VolumeHealth {
                abnormal: false,
                message: "ok".into(),
            },
            Err(e) => VolumeHealth {
                abnormal: true,
                message: format!("volume data {} is missing: {e}", path.display()),
            },
        }
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

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::os::fake::FakeHost;
    use crate::pool::PoolConfig;

    pub(crate) struct Fixture {
        pub dir: tempfile::TempDir,
        pub fake: Arc<FakeHost>,
        pub mgr: VolumeManager,
    }

    pub(crate) fn fixture(btrfs: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool");
        let config = if btrfs {
            PoolConfig::Btrfs { path }
        } else {
            PoolConfig::Dir { path }
        };
        std::fs::create_dir_all(dir.path().join("pool")).unwrap();
        fixture_with(dir, FakeHost::new(btrfs), &config)
    }

    /// A manager over an embedded pool (fake btrfs) with loop images of `loop_layout`
    /// in `<tmp>/images`.
    pub(crate) fn embedded_fixture(loop_layout: crate::model::Layout) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let config = PoolConfig::Embedded {
            image: dir.path().join("pool.img"),
            mount: dir.path().join("pool"),
            size: 1 << 30,
            images: dir.path().join("images"),
            loop_layout,
        };
        fixture_with(dir, FakeHost::new(true), &config)
    }

    /// A manager in `dir` over the pool `config` names, on `fake`.
    fn fixture_with(dir: tempfile::TempDir, fake: Arc<FakeHost>, config: &PoolConfig) -> Fixture {
        let pool = Pool::open(config, fake.host()).unwrap();
        let store = Store::open(&dir.path().join("meta.redb")).unwrap();
        let node = NodeIdentity {
            node_id: "node-1".into(),
            state_dir: dir.path().join("state"),
            ephemeral_dir: dir.path().join("ephemeral"),
            attach_dir: dir.path().join("attach"),
            layers_dir: dir.path().join("layers"),
            overlay_program: dir.path().join("stowage-overlay"),
        };
        let mgr = VolumeManager::new(store, pool, fake.host(), node);
        Fixture { dir, fake, mgr }
    }

    pub(crate) fn req(name: &str, kind: &str, bytes: u64) -> CreateRequest {
        let mut p = HashMap::new();
        p.insert("kind".to_string(), kind.to_string());
        CreateRequest::new(name, bytes, 0, VolumeParams::parse(&p, None).unwrap())
    }

    #[test]
    fn replicated_create_needs_its_replica_nodes() {
        let f = fixture(true);
        let mut p = HashMap::new();
        p.insert("replicas".to_string(), "3".to_string());
        let params = VolumeParams::parse(&p, None).unwrap();
        let mut r = CreateRequest::new("rep", 1 << 20, 0, params);
        assert!(matches!(f.mgr.create(&r), Err(Error::InvalidArgument(_))));
        r.replica_nodes = vec!["b".into()];
        assert!(matches!(f.mgr.create(&r), Err(Error::InvalidArgument(_))));
        r.replica_nodes.push("c".into());
        let rec = f.mgr.create(&r).unwrap();
        let spec = rec.replication.unwrap();
        assert_eq!((spec.copies, spec.nodes.len()), (3, 2));
        assert_eq!(rec.generation, 1);
    }

    #[test]
    fn create_dir_volume_on_btrfs_sets_qgroup_limit() {
        let f = fixture(true);
        let rec = f.mgr.create(&req("a", "dir", 5 << 20)).unwrap();
        assert!(is_valid_id(&rec.id));
        assert!(rec.capacity_enforced);
        let dir = f.mgr.pool().volume_dir(&rec.id);
        assert_eq!(f.fake.limit_of(&dir), Some(5 << 20));
        assert_eq!(f.mgr.get(&rec.id).unwrap().state, VolumeState::Ready);
    }

    #[test]
    fn dir_volume_on_plain_pool_is_not_enforced() {
        let f = fixture(false);
        let rec = f.mgr.create(&req("a", "dir", 5 << 20)).unwrap();
        assert!(!rec.capacity_enforced);
        assert!(f.fake.calls().iter().all(|c| !c.starts_with("set_limit")));
    }

    #[test]
    fn create_is_idempotent_by_name_and_conflicts_on_different_size() {
        let f = fixture(true);
        let a = f.mgr.create(&req("same", "dir", 5 << 20)).unwrap();
        let b = f.mgr.create(&req("same", "dir", 5 << 20)).unwrap();
        assert_eq!(a.id, b.id);
        assert!(matches!(
            f.mgr.create(&req("same", "dir", 50 << 20)),
            Err(Error::NameConflict { .. })
        ));
        assert!(matches!(
            f.mgr.create(&req("same", "loop", 5 << 20)),
            Err(Error::NameConflict { .. })
        ));
    }

    #[test]
    fn failed_format_leaves_no_record_and_no_directory() {
        // A plain pool: no cleaner to wait for, so the failure stands.
        let f = fixture(false);
        f.fake.fail_next("format", libc::ENOSPC);
        let err = f.mgr.create(&req("x", "loop", 64 << 20)).unwrap_err();
        assert!(err.is_no_space(), "{err:?}");
        assert!(f.mgr.store.list::<VolumeRecord>().unwrap().is_empty());
        let vols = f.dir.path().join("pool/volumes");
        assert_eq!(std::fs::read_dir(vols).unwrap().count(), 0);
    }

    #[test]
    fn out_of_space_on_btrfs_waits_for_the_cleaner_and_tries_again() {
        let f = fixture(true);
        f.fake.fail_next("format", libc::ENOSPC);
        let rec = f.mgr.create(&req("x", "loop", 64 << 20)).unwrap();
        let calls = f.fake.calls();
        let wait = calls.iter().position(|c| c.starts_with("wait_for_cleaner"));
        let formats: Vec<usize> = calls
            .iter()
            .enumerate()
            .filter(|(_, c)| c.starts_with("format "))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(formats.len(), 2, "{calls:?}");
        assert!(
            wait.is_some_and(|w| formats[0] < w && w < formats[1]),
            "{calls:?}"
        );
        assert_eq!(f.mgr.get(&rec.id).unwrap().state, VolumeState::Ready);
    }

    #[test]
    fn capacity_beyond_pool_free_space_is_no_space_and_leaves_nothing() {
        let f = fixture(true);
        let err = f.mgr.create(&req("huge", "dir", 1 << 60)).unwrap_err();
        assert!(matches!(err, Error::NoSpace(_)));
        // Before giving up, btrfs's cleaner was waited for (deleted subvolumes' space).
        let waits = f
            .fake
            .calls()
            .iter()
            .filter(|c| c.starts_with("wait_for_cleaner"))
            .count();
        assert!(waits >= 1, "{:?}", f.fake.calls());
        assert!(f.mgr.store.list::<VolumeRecord>().unwrap().is_empty());
        assert!(
            !f.fake
                .calls()
                .iter()
                .any(|c| c.starts_with("create_subvolume"))
        );
    }

    #[test]
    fn capacity_rules() {
        let f = fixture(true);
        let mut r = req("c", "loop", 0);
        r.params = VolumeParams::parse(
            &[
                ("kind".to_string(), "loop".to_string()),
                ("fsType".to_string(), "xfs".to_string()),
            ]
            .into_iter()
            .collect(),
            None,
        )
        .unwrap();
        r.required_bytes = 1 << 20;
        assert_eq!(f.mgr.choose_capacity(&r).unwrap(), 300 << 20);
        r.limit_bytes = 100 << 20;
        assert!(matches!(
            f.mgr.choose_capacity(&r),
            Err(Error::OutOfRange(_))
        ));
        r.required_bytes = 200 << 20;
        assert!(matches!(
            f.mgr.choose_capacity(&r),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(
            f.mgr.choose_capacity(&req("d", "dir", 0)).unwrap(),
            DEFAULT_CAPACITY
        );
        assert_eq!(f.mgr.choose_capacity(&req("d", "dir", 1)).unwrap(), 1 << 20);
    }

    #[test]
    fn delete_is_idempotent_and_refuses_staged_volumes() {
        let f = fixture(true);
        let rec = f.mgr.create(&req("d", "dir", 1 << 20)).unwrap();
        f.mgr.delete(&rec.id).unwrap();
        f.mgr.delete(&rec.id).unwrap();
        f.mgr.delete("v-00000000000000000000000000000000").unwrap();
        f.mgr.delete("../../etc").unwrap();
        assert!(matches!(f.mgr.get(&rec.id), Err(Error::VolumeNotFound(_))));

        let rec = f.mgr.create(&req("e", "dir", 1 << 20)).unwrap();
        let staging = f.dir.path().join("staging");
        f.mgr.stage(&rec.id, &staging, &Default::default()).unwrap();
        assert!(matches!(
            f.mgr.delete(&rec.id),
            Err(Error::FailedPrecondition(_))
        ));
    }

    #[test]
    fn ids_that_could_escape_are_not_found() {
        let f = fixture(true);
        for bad in [
            "../x",
            "v-../../etc",
            "/etc",
            "",
            "v-ABCDEF00000000000000000000000000",
        ] {
            assert!(!is_valid_id(bad));
            assert!(matches!(f.mgr.get(bad), Err(Error::VolumeNotFound(_))));
        }
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("pvc-1234").is_ok());
        assert!(validate_name(&"x".repeat(128)).is_ok());
        assert!(validate_name(&"x".repeat(129)).is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("..").is_err());
        assert!(validate_name("").is_err());
        assert!(validate_name("a\nb").is_err());
        // Nothing visible, or text that shows as something else.
        for bad in [
            "   ",
            "\u{202E}",
            "\u{200B}\u{200B}",
            " \u{FEFF} ",
            "abc\u{202E}gpj.exe",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name("données été").is_ok());
        assert!(validate_name("a b").is_ok());
    }

    #[test]
    fn list_pages_by_id() {
        let f = fixture(true);
        for i in 0..5 {
            f.mgr
                .create(&req(&format!("n{i}"), "dir", 1 << 20))
                .unwrap();
        }
        let first = f.mgr.list(None, 2).unwrap();
        assert_eq!(first.len(), 2);
        let rest = f.mgr.list(Some(&first[1].id), 10).unwrap();
        assert_eq!(rest.len(), 3);
        assert!(rest.iter().all(|r| r.id > first[1].id));
    }

    #[test]
    fn concurrent_operation_on_same_volume_is_busy() {
        let f = fixture(true);
        let rec = f.mgr.create(&req("busy", "dir", 1 << 20)).unwrap();
        let _held = f.mgr.claim(&rec.id).unwrap();
        assert!(matches!(f.mgr.delete(&rec.id), Err(Error::Busy(_))));
    }
}
