//! The volume manager: the controller-side operations (create, delete, list, get,
//! capacity) over a pool and the metadata store. Node-side operations live in
//! [`crate::manager::node`], recovery after a restart in [`crate::manager::reconcile`].

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

    /// How volume `rec`'s data sits on this node.
    pub fn layout_of(&self, rec: &VolumeRecord) -> crate::model::Layout {
        self.pool.layout_of(rec)
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

pub mod attachment;
pub mod container;
mod create;
mod delete;
pub mod ephemeral;
pub mod expand;
pub mod failover;
pub mod modify;
pub mod node;
pub mod plugin_mounts;
pub mod rebuild;
pub mod reconcile;
pub mod snapshot;

#[cfg(test)]
pub(crate) mod tests;
