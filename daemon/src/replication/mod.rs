//! The primary's side of replication. A schedule ([`run`]) looks at every replicated
//! volume once a second: when its interval has passed it takes a replication
//! snapshot (volume-core), then brings each replica node to the newest snapshot with
//! a `btrfs send` stream — incremental from the newest snapshot both hold, else full —
//! sent to the peer's `ReceiveSnapshot` as a header, data chunks of at most 1 MiB and
//! a trailer with the stream's length and blake3. A stream cut off mid-way is resumed
//! from the byte the replica holds. A peer that answers with a newer generation of
//! the volume makes this node step down (split brain, see volume-core's failover).
//!
//! Per link (volume, replica node) the schedule keeps what the status views show:
//! state, lag and the last error ([`ReplicationState`]).
//!
//! [`scheduler`] runs the schedule, [`sender`] streams snapshots, [`placement`] picks
//! replica nodes, [`state`] keeps per-link state and cut-off streams, [`status`] shows
//! them, and [`link`] is the authenticated connection to a peer.

pub mod link;
pub mod placement;
pub mod scheduler;
pub mod sender;
pub mod state;
pub mod status;

pub use placement::{drop_copies, place};
pub use scheduler::run;
pub use sender::replicate;
pub use state::{PARKED_FOR, RETRY_AFTER, ReplicationState, dispose};
pub use status::{health, statuses};
