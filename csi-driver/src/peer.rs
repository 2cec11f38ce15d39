//! The peer service (stowage.proto `Peer`): what daemons say to each other over TCP.
//! Every call carries the cluster secret in the metadata key
//! [`SECRET_METADATA_KEY`]; [`PeerAuth`] refuses any other with UNAUTHENTICATED,
//! comparing blake3 digests (constant-time equality) and logging the refusal with the
//! caller's address, never the secret. Peers are configured statically
//! (`--peer NODE_ID=HOST:PORT`). With [`PeerTls`] the link is mutual TLS: each side
//! presents a certificate signed by the cluster's CA, and a client checks that the
//! server's certificate names the node id it meant to reach.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use stowage_proto::stowage::v1 as pb;
use stowage_proto::stowage::v1::peer_client::PeerClient;
use stowage_proto::stowage::v1::peer_server::{Peer, PeerServer};
use stowage_proto::stowage::v1::snapshot_chunk::Part;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use volume_core::replication::{Holding, IncomingHeader};
use volume_core::{FsType, VolumeKind};

use crate::driver::Driver;
use crate::service::Volumes;
use crate::service::peers::{Incoming, Received};

/// The gRPC metadata key that carries the cluster secret.
pub const SECRET_METADATA_KEY: &str = "x-stowage-cluster-secret";

/// Errors of the peer service's set-up and client side.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The secret file could not be read.
    #[error("read cluster secret {0}")]
    SecretFile(PathBuf, #[source] std::io::Error),
    /// The secret is empty or not printable ASCII (it travels as a metadata value).
    #[error("cluster secret in {0} must be non-empty printable ASCII")]
    BadSecret(PathBuf),
    /// A `--peer` value is not `NODE_ID=HOST:PORT`.
    #[error("peer {0:?}: expected NODE_ID=HOST:PORT")]
    BadPeer(String),
    /// No peer of that node id is configured.
    #[error("no peer {0:?} is configured (--peer NODE_ID=HOST:PORT)")]
    UnknownPeer(String),
    /// Connecting to a peer failed.
    #[error("connect to peer {0}")]
    Connect(String, #[source] tonic::transport::Error),
    /// A TLS file could not be read.
    #[error("read {0}")]
    TlsFile(PathBuf, #[source] std::io::Error),
    /// The TLS settings were refused.
    #[error("peer TLS settings")]
    Tls(#[source] tonic::transport::Error),
}

/// Mutual TLS for the peer link: this node's certificate and key, and the cluster
/// CA that every peer's certificate must be signed by. A node's certificate names its
/// node id (a DNS subject alternative name), which clients check.
#[derive(Clone)]
pub struct PeerTls {
    identity: tonic::transport::Identity,
    ca: tonic::transport::Certificate,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls(..)")
    }
}

impl PeerTls {
    /// Reads PEM files: certificate (chain), private key, CA certificate.
    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, PeerError> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| PeerError::TlsFile(p.to_path_buf(), e));
        Ok(PeerTls {
            identity: tonic::transport::Identity::from_pem(read(cert)?, read(key)?),
            ca: tonic::transport::Certificate::from_pem(read(ca)?),
        })
    }

    fn server(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
    }

    fn client(&self, node_id: &str) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(node_id)
    }
}

/// The cluster's shared secret. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct ClusterSecret {
    value: AsciiMetadataValue,
    digest: blake3::Hash,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// The secret in `path`, without surrounding whitespace.
    pub fn from_file(path: &Path) -> Result<Self, PeerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PeerError::SecretFile(path.to_path_buf(), e))?;
        Self::new(text.trim()).ok_or_else(|| PeerError::BadSecret(path.to_path_buf()))
    }

    /// `secret` if it is non-empty printable ASCII.
    pub fn new(secret: &str) -> Option<Self> {
        if secret.is_empty() || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        Some(ClusterSecret {
            value: secret.parse().ok()?,
            digest: blake3::hash(secret.as_bytes()),
        })
    }

    /// True when `presented` is this secret. Digests are compared, in constant time
    /// (`blake3::Hash` equality), so the time taken says nothing about the secret.
    pub fn matches(&self, presented: &[u8]) -> bool {
        blake3::hash(presented) == self.digest
    }
}

/// Server-side check of every peer call's secret.
#[derive(Debug, Clone)]
pub struct PeerAuth {
    secret: ClusterSecret,
}

impl Interceptor for PeerAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let ok = req
            .metadata()
            .get(SECRET_METADATA_KEY)
            .is_some_and(|v| self.secret.matches(v.as_bytes()));
        if ok {
            return Ok(req);
        }
        let addr = req
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".into());
        tracing::warn!(peer.addr = %addr, "peer call refused: missing or wrong cluster secret");
        Err(Status::unauthenticated("cluster secret missing or wrong"))
    }
}

/// Client side: adds the secret to every call.
#[derive(Debug, Clone)]
pub struct SendSecret {
    secret: ClusterSecret,
}

impl Interceptor for SendSecret {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut()
            .insert(SECRET_METADATA_KEY, self.secret.value.clone());
        Ok(req)
    }
}

/// A client of a peer's service that presents the cluster secret.
pub type AuthedPeerClient = PeerClient<InterceptedService<Channel, SendSecret>>;

/// Connects to the peer service at `addr` (`HOST:PORT`), presenting `secret`. HTTP/2
/// keepalive pings notice a peer that went away mid-stream (a link down sends no
/// reset) within about ten seconds.
pub async fn connect(
    addr: &str,
    secret: &ClusterSecret,
    tls: Option<(&PeerTls, &str)>,
) -> Result<AuthedPeerClient, PeerError> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| PeerError::Connect(addr.to_string(), e))?;
    if let Some((tls, node_id)) = tls {
        endpoint = endpoint
            .tls_config(tls.client(node_id))
            .map_err(PeerError::Tls)?;
    }
    let channel = endpoint
        .connect_timeout(KEEPALIVE)
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(2 * WINDOW)
        .connect()
        .await
        .map_err(|e| PeerError::Connect(addr.to_string(), e))?;
    Ok(PeerClient::with_interceptor(
        channel,
        SendSecret {
            secret: secret.clone(),
        },
    ))
}

/// The statically configured peers and the secret to reach them.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    /// Node id → `HOST:PORT` of its peer service.
    pub addrs: BTreeMap<String, String>,
    /// The cluster secret (None: peering is off).
    pub secret: Option<ClusterSecret>,
    /// Mutual TLS for the link (None: plain TCP).
    pub tls: Option<PeerTls>,
}

impl Peers {
    /// Parses `--peer` values (`NODE_ID=HOST:PORT`).
    pub fn parse(values: &[String], secret: Option<ClusterSecret>) -> Result<Self, PeerError> {
        let mut addrs = BTreeMap::new();
        for v in values {
            let (id, addr) = v
                .split_once('=')
                .filter(|(id, addr)| !id.is_empty() && addr.contains(':'))
                .ok_or_else(|| PeerError::BadPeer(v.clone()))?;
            addrs.insert(id.to_string(), addr.to_string());
        }
        Ok(Peers {
            addrs,
            secret,
            tls: None,
        })
    }

    /// Connects to configured peer `node_id`.
    pub async fn connect(&self, node_id: &str) -> Result<AuthedPeerClient, PeerError> {
        let addr = self
            .addrs
            .get(node_id)
            .ok_or_else(|| PeerError::UnknownPeer(node_id.to_string()))?;
        let secret = self
            .secret
            .as_ref()
            .ok_or_else(|| PeerError::UnknownPeer(node_id.to_string()))?;
        connect(addr, secret, self.tls.as_ref().map(|t| (t, node_id))).await
    }
}

/// Largest data chunk of a replication stream.
pub const MAX_CHUNK: usize = 1 << 20;
/// HTTP/2 flow-control window of a peer stream: a few 1 MiB chunks in flight, so the
/// sender is not held up waiting for each window update.
pub const WINDOW: u32 = 4 << 20;
/// Keepalive ping interval and timeout of peer connections (both sides).
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(5);

/// The Peer service.
#[derive(Debug, Clone)]
pub struct PeerService {
    driver: Arc<Driver>,
    volumes: Volumes,
}

/// A peer's stream header as the domain takes it; a kind, filesystem or stream format
/// it does not know is INVALID_ARGUMENT (the rest is checked by `begin_receive`).
pub fn incoming_header(h: pb::SnapshotHeader) -> Result<IncomingHeader, Status> {
    let bad = |e: volume_core::Error| crate::status::to_status(&e);
    Ok(IncomingHeader {
        volume_id: h.volume_id,
        name: h.name,
        kind: VolumeKind::parse(&h.kind).map_err(bad)?,
        fs: if h.fs_type.is_empty() {
            None
        } else {
            Some(FsType::parse(&h.fs_type).map_err(bad)?)
        },
        capacity: h.capacity_bytes,
        snapshot: h.snapshot,
        parent: Some(h.parent).filter(|p| !p.is_empty()),
        source_node_id: h.source_node_id,
        generation: h.generation.max(1),
        taken_at: h.taken_at,
        format: volume_core::replication::StreamFormat::parse(&h.stream_format).map_err(bad)?,
        spec: (h.copies > 1).then_some(volume_core::ReplicationSpec {
            copies: h.copies,
            interval_secs: h.interval_secs,
            nodes: h.replica_nodes,
        }),
    })
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn hello(
        &self,
        request: Request<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloResponse>, Status> {
        let req = request.into_inner();
        let node_id = self.driver.config.node_id.clone();
        let volumes = self.volumes.clone();
        crate::rpc::respond(async move {
            tracing::debug!(peer.node_id = %req.node_id, "peer hello");
            Ok(pb::HelloResponse {
                node_id,
                version: env!("CARGO_PKG_VERSION").to_string(),
                available_bytes: volumes.available().await?,
            })
        })
        .await
    }

    async fn replica_state(
        &self,
        request: Request<pb::ReplicaStateRequest>,
    ) -> Result<Response<pb::ReplicaStateResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::observe::volume(&req.volume_id);
        crate::rpc::respond(async move {
            let holding = volumes.holding(&req.volume_id).await?;
            let partial = volumes.driver().replication.partial(&req.volume_id);
            Ok(match holding {
                Holding::Nothing => pb::ReplicaStateResponse {
                    role: "none".into(),
                    partial,
                    ..Default::default()
                },
                Holding::Replica {
                    generation,
                    snapshots,
                } => pb::ReplicaStateResponse {
                    snapshots,
                    role: "replica".into(),
                    generation,
                    partial,
                },
                Holding::Primary {
                    generation,
                    snapshots,
                } => pb::ReplicaStateResponse {
                    snapshots,
                    role: "primary".into(),
                    generation,
                    partial: None,
                },
            })
        })
        .await
    }

    async fn drop_replica(
        &self,
        request: Request<pb::DropReplicaRequest>,
    ) -> Result<Response<pb::DropReplicaResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::observe::volume(&req.volume_id);
        crate::rpc::respond(async move {
            let removed = volumes
                .drop_copy(&req.volume_id, req.generation.max(1))
                .await?;
            Ok(pb::DropReplicaResponse { removed })
        })
        .await
    }

    async fn receive_snapshot(
        &self,
        request: Request<tonic::Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::ReceiveSnapshotResponse>, Status> {
        let mut stream = request.into_inner();
        let volumes = self.volumes.clone();
        crate::rpc::respond(async move {
            let (header, offset) = match stream.message().await?.and_then(|c| c.part) {
                Some(Part::Header(h)) => {
                    let offset = h.resume_offset;
                    (incoming_header(h)?, offset)
                }
                _ => {
                    return Err(Status::invalid_argument(
                        "the first message must be the header",
                    ));
                }
            };
            // Chunks go through a bounded channel to the blocking receiver, which
            // pipes them into `btrfs receive`.
            let (tx, rx) = tokio::sync::mpsc::channel::<Incoming>(8);
            let apply = volumes.receive(header, offset, rx);
            // The sender half goes with the forwarding: the receiver sees the end.
            let forward = async move {
                while let Some(msg) = stream.message().await? {
                    let item = match msg.part {
                        Some(Part::Data(d)) if d.len() <= MAX_CHUNK => Incoming::Data(d),
                        Some(Part::Data(_)) => {
                            return Err(Status::invalid_argument(
                                "a data chunk is larger than 1 MiB",
                            ));
                        }
                        Some(Part::Trailer(t)) => Incoming::Trailer(t.blake3, t.length),
                        Some(Part::Header(_)) | None => {
                            return Err(Status::invalid_argument(
                                "only data chunks and a trailer may follow the header",
                            ));
                        }
                    };
                    let last = matches!(item, Incoming::Trailer(..));
                    // A closed channel: the receiver failed; its error is the answer.
                    if tx.send(item).await.is_err() || last {
                        break;
                    }
                }
                Ok::<(), Status>(())
            };
            let (applied, forwarded) = tokio::join!(apply, forward);
            match applied? {
                Received::Applied(snap) => {
                    forwarded?;
                    Ok(pb::ReceiveSnapshotResponse {
                        snapshot: snap.name,
                        bytes: snap.stream_bytes,
                    })
                }
                Received::Cut => Err(forwarded
                    .err()
                    .unwrap_or_else(|| Status::aborted("the stream ended before its trailer"))),
            }
        })
        .await
    }
}

/// Serves the peer service of `driver` on `listener` until `shutdown`, refusing calls
/// without `secret` (and, with the driver's peer TLS, connections without a
/// certificate of the cluster CA).
pub async fn serve(
    listener: tokio::net::TcpListener,
    driver: Arc<Driver>,
    secret: ClusterSecret,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let tls = driver.config.peers.tls.clone();
    let observe = crate::observe::ObserveLayer::new(Arc::clone(&driver.metrics));
    let service = PeerServer::with_interceptor(
        PeerService {
            volumes: Volumes::new(Arc::clone(&driver)),
            driver,
        },
        PeerAuth { secret },
    );
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        builder = builder.tls_config(tls.server())?;
    }
    builder
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE))
        .initial_stream_window_size(Some(WINDOW))
        .initial_connection_window_size(Some(2 * WINDOW))
        .layer(observe)
        .add_service(service)
        .serve_with_incoming_shutdown(
            // tonic's own `tcp_nodelay` does not reach sockets of a listener passed in:
            // set it on each. Without it, Nagle on the receiver and delayed ACKs on the
            // sender stall every HTTP/2 window update (a full sync ran at 1/9 of a plain
            // TCP copy).
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                |conn| {
                    conn.inspect(|s| {
                        if let Err(e) = s.set_nodelay(true) {
                            tracing::debug!(error = %e, "TCP_NODELAY not set on a peer connection");
                        }
                    })
                },
            ),
            shutdown,
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::{ClusterSecret, Peers};

    #[test]
    fn secret_matches_only_itself_and_debug_hides_it() {
        let s = ClusterSecret::new("s3cret-value").unwrap();
        assert!(s.matches(b"s3cret-value"));
        assert!(!s.matches(b"s3cret-valuf"));
        assert!(!s.matches(b""));
        assert!(!format!("{s:?}").contains("s3cret"));
        assert!(ClusterSecret::new("").is_none());
        assert!(ClusterSecret::new("has space").is_none());
    }

    #[test]
    fn peers_parse_node_id_equals_address() {
        let p = Peers::parse(&["b=127.0.0.1:7000".to_string()], None).unwrap();
        assert_eq!(p.addrs["b"], "127.0.0.1:7000");
        assert!(Peers::parse(&["b".to_string()], None).is_err());
        assert!(Peers::parse(&["=1.2.3.4:5".to_string()], None).is_err());
        assert!(Peers::parse(&["b=nohostport".to_string()], None).is_err());
    }
}
