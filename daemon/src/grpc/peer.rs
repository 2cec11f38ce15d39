//! The peer service (stowage.proto `Peer`): what daemons say to each other over TCP,
//! as translations onto the service layer. The same listener serves the CSI
//! Controller, for a cluster controller to carry calls to this node. [`PeerAuth`] refuses a call without the
//! cluster secret with UNAUTHENTICATED, comparing blake3 digests (constant-time
//! equality) and logging the refusal with the caller's address, never the secret.

use std::future::Future;
use std::sync::Arc;

use stowage_proto::csi::v1::controller_server::ControllerServer;
use stowage_proto::stowage::v1 as pb;
use stowage_proto::stowage::v1::peer_server::{Peer, PeerServer};
use stowage_proto::stowage::v1::snapshot_chunk::Part;
use tonic::service::Interceptor;
use tonic::{Request, Response, Status};
use volume_core::replication::{Holding, IncomingHeader};
use volume_core::{FsType, VolumeKind};

use crate::driver::Driver;
use crate::grpc::controller::ControllerService;
use crate::replication::link::{ClusterSecret, KEEPALIVE, MAX_CHUNK, SECRET_METADATA_KEY, WINDOW};
use crate::service::Volumes;
use crate::service::peers::{Incoming, Received};

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

/// The Peer service.
#[derive(Debug, Clone)]
pub struct PeerService {
    driver: Arc<Driver>,
    volumes: Volumes,
}

/// A peer's stream header as the domain takes it; a kind, filesystem or stream format
/// it does not know is INVALID_ARGUMENT (the rest is checked by `begin_receive`).
pub fn incoming_header(h: pb::SnapshotHeader) -> Result<IncomingHeader, Status> {
    let bad = |e: volume_core::Error| crate::grpc::status::to_status(&e);
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
        crate::grpc::rpc::respond(async move {
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
        crate::grpc::observe::volume(&req.volume_id);
        crate::grpc::rpc::respond(async move {
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
        crate::grpc::observe::volume(&req.volume_id);
        crate::grpc::rpc::respond(async move {
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
        crate::grpc::rpc::respond(async move {
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
    let observe = crate::grpc::observe::ObserveLayer::new(Arc::clone(&driver.metrics));
    // The CSI Controller on the same listener, behind the same secret: what a
    // cluster controller (`stowaged --cluster-controller`) carries its calls to.
    let controller = ControllerServer::with_interceptor(
        ControllerService::new(Arc::clone(&driver)),
        PeerAuth {
            secret: secret.clone(),
        },
    );
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
        .add_service(controller)
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
