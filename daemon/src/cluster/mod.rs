//! The cluster controller (`stowaged --cluster-controller`): one CSI Controller for a
//! whole cluster, for the standard sidecars in their central mode. It holds no volume
//! and no state of its own: each call goes, over the authenticated peer link, to the
//! CSI Controller that the daemon of the owning node serves on its peer listener
//! (`grpc::peer::serve`), where the node's service layer carries it out.
//!
//! Which node: CreateVolume goes to the first node its topology requirement prefers
//! (the node the scheduler picked, with WaitForFirstConsumer), or to the node that
//! holds its source; every other call asks all nodes who holds the volume or
//! snapshot ([`Cluster::owner`]). A node that does not answer makes an answer
//! UNAVAILABLE rather than wrong: the sidecars retry.

pub mod controller;
pub mod identity;
pub mod routing;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use stowage_proto::csi::v1::controller_client::ControllerClient;
use stowage_proto::csi::v1::controller_server::ControllerServer;
use stowage_proto::csi::v1::identity_server::IdentityServer;
use tokio::sync::Mutex;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::replication::link::{Peers, SendSecret};

/// A client of one node's CSI Controller over the peer link.
pub type NodeController = ControllerClient<InterceptedService<Channel, SendSecret>>;

/// The nodes a cluster controller reaches and its open channels to them.
#[derive(Debug)]
pub struct Cluster {
    peers: Peers,
    channels: Mutex<BTreeMap<String, (Channel, SendSecret)>>,
}

/// What one node said about an id.
#[derive(Debug)]
enum Held {
    Yes,
    No,
    Unknown(Status),
}

impl Cluster {
    /// A cluster of the configured `peers` (each a node daemon's peer listener).
    pub fn new(peers: Peers) -> Arc<Self> {
        Arc::new(Cluster {
            peers,
            channels: Mutex::new(BTreeMap::new()),
        })
    }

    /// The configured node ids, in order.
    pub fn nodes(&self) -> Vec<String> {
        self.peers.addrs.keys().cloned().collect()
    }

    /// True when `node` is a configured node.
    pub fn has_node(&self, node: &str) -> bool {
        self.peers.addrs.contains_key(node)
    }

    /// The CSI Controller of `node`. A channel is opened once and kept; a call that
    /// fails with UNAVAILABLE drops it ([`Cluster::forget`]) so the next one reconnects.
    pub async fn controller(&self, node: &str) -> Result<NodeController, Status> {
        let cached = self.channels.lock().await.get(node).cloned();
        let (channel, secret) = match cached {
            Some(open) => open,
            None => {
                // Connected without the lock: a node that does not answer (up to the
                // connect timeout) must not hold up calls to the others.
                let open = self.peers.channel(node).await.map_err(|e| {
                    Status::unavailable(format!(
                        "node {node}: {}",
                        crate::grpc::status::peer_status(&e).message()
                    ))
                })?;
                self.channels
                    .lock()
                    .await
                    .insert(node.to_string(), open.clone());
                open
            }
        };
        Ok(ControllerClient::with_interceptor(channel, secret))
    }

    /// Drops the channel to `node` after `status`, when it says the node is gone.
    pub async fn forget(&self, node: &str, status: &Status) {
        if status.code() == tonic::Code::Unavailable {
            self.channels.lock().await.remove(node);
        }
    }

    /// Runs `call` on `node`'s controller; an UNAVAILABLE answer names the node.
    pub async fn on<T, F, Fut>(&self, node: &str, call: F) -> Result<T, Status>
    where
        F: FnOnce(NodeController) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let client = self.controller(node).await?;
        match call(client).await {
            Ok(r) => Ok(r.into_inner()),
            Err(status) => {
                self.forget(node, &status).await;
                if status.code() == tonic::Code::Unavailable {
                    Err(Status::unavailable(format!(
                        "node {node}: {}",
                        status.message()
                    )))
                } else {
                    Err(status)
                }
            }
        }
    }

    /// The node that holds what `probe` looks up (a volume or snapshot id): asks
    /// every node at once. `Ok(None)` only when every node answered that it does not
    /// hold it; UNAVAILABLE when none holds it and some node did not answer;
    /// FAILED_PRECONDITION when two nodes claim it (a split brain that only
    /// `vol` on the nodes can resolve).
    pub async fn owner<F, Fut>(&self, what: &str, probe: F) -> Result<Option<String>, Status>
    where
        F: Fn(NodeController) -> Fut,
        Fut: Future<Output = Result<bool, Status>>,
    {
        let asks = self.nodes().into_iter().map(|node| {
            let probe = &probe;
            async move {
                let held = match self.controller(&node).await {
                    Err(e) => Held::Unknown(e),
                    Ok(client) => match probe(client).await {
                        Ok(true) => Held::Yes,
                        Ok(false) => Held::No,
                        Err(e) if e.code() == tonic::Code::NotFound => Held::No,
                        Err(e) => {
                            self.forget(&node, &e).await;
                            Held::Unknown(e)
                        }
                    },
                };
                (node, held)
            }
        });
        let answers = futures_util::future::join_all(asks).await;
        routing::pick_owner(what, answers)
    }
}

/// Serves the cluster controller's CSI Identity and Controller on `listener` until
/// `shutdown`.
pub async fn serve(
    cluster: Arc<Cluster>,
    metrics: Arc<crate::metrics::Metrics>,
    listener: tokio::net::UnixListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let observe = crate::grpc::observe::ObserveLayer::new(metrics);
    tonic::transport::Server::builder()
        .layer(observe)
        .add_service(IdentityServer::new(identity::ClusterIdentity))
        .add_service(ControllerServer::new(controller::ClusterController::new(
            cluster,
        )))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
}
