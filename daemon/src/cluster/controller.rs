//! The cluster controller's CSI Controller: each call validated for what routing needs,
//! then carried to the node that owns its volume or snapshot (or, for a new volume,
//! to the node its topology and source decide), whose answer is returned unchanged.

use std::sync::Arc;

use stowage_proto::csi::v1 as csi;
use stowage_proto::csi::v1::controller_server::Controller;
use tonic::{Request, Response, Status};

use super::routing::{candidates, page, placement, topology_node};
use super::{Cluster, NodeController};
use crate::grpc::rpc::{require, respond};

/// The Controller service of a cluster controller.
#[derive(Debug, Clone)]
pub struct ClusterController {
    cluster: Arc<Cluster>,
}

impl ClusterController {
    /// Serves the controller of `cluster`.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        ClusterController { cluster }
    }

    /// The node holding volume `id`, if any node does.
    async fn volume_owner(&self, id: &str) -> Result<Option<String>, Status> {
        let id = id.to_string();
        self.cluster
            .owner(&format!("volume {id}"), |mut c: NodeController| {
                let id = id.clone();
                async move {
                    c.controller_get_volume(csi::ControllerGetVolumeRequest { volume_id: id })
                        .await
                        .map(|_| true)
                }
            })
            .await
    }

    /// The node holding snapshot `id`, if any node does.
    async fn snapshot_owner(&self, id: &str) -> Result<Option<String>, Status> {
        let id = id.to_string();
        self.cluster
            .owner(&format!("snapshot {id}"), |mut c: NodeController| {
                let id = id.clone();
                async move {
                    let listed = c
                        .list_snapshots(csi::ListSnapshotsRequest {
                            snapshot_id: id,
                            ..Default::default()
                        })
                        .await?;
                    Ok(!listed.into_inner().entries.is_empty())
                }
            })
            .await
    }

    /// The owner of volume `id`, NOT_FOUND when no node holds it.
    async fn volume_node(&self, id: &str) -> Result<String, Status> {
        self.volume_owner(id)
            .await?
            .ok_or_else(|| Status::not_found(format!("volume {id} is on no node")))
    }

    /// `call` on the node that holds volume `id` (NOT_FOUND when none does).
    async fn at_volume<T, F, Fut>(&self, id: &str, call: F) -> Result<T, Status>
    where
        F: FnOnce(NodeController) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        require(id, "volume_id")?;
        let node = self.volume_node(id).await?;
        self.cluster.on(&node, call).await
    }

    /// Every node's answer to `call`, skipping none: UNAVAILABLE when any node does
    /// not answer, since a listing without it would look like its volumes are gone.
    async fn ask_every_node<T, F, Fut>(&self, call: F) -> Result<Vec<(String, T)>, Status>
    where
        F: Fn(NodeController) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let asks = self.cluster.nodes().into_iter().map(|node| {
            let call = &call;
            async move {
                let answer = self.cluster.on(&node, call).await;
                answer.map(|a| (node, a))
            }
        });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .collect()
    }
}

#[tonic::async_trait]
impl Controller for ClusterController {
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let req = request.into_inner();
        respond(async move {
            require(&req.name, "name")?;
            if req.volume_capabilities.is_empty() {
                return Err(Status::invalid_argument("volume_capabilities is required"));
            }
            let nodes = candidates(
                req.accessibility_requirements.as_ref(),
                &self.cluster.nodes(),
            )?;
            use csi::volume_content_source::Type as Source;
            let source_owner = match req
                .volume_content_source
                .as_ref()
                .and_then(|s| s.r#type.as_ref())
            {
                None => None,
                Some(Source::Snapshot(s)) => {
                    require(&s.snapshot_id, "volume_content_source.snapshot_id")?;
                    Some(self.snapshot_owner(&s.snapshot_id).await?.ok_or_else(|| {
                        Status::not_found(format!("snapshot {} is on no node", s.snapshot_id))
                    })?)
                }
                Some(Source::Volume(v)) => {
                    require(&v.volume_id, "volume_content_source.volume_id")?;
                    Some(self.volume_node(&v.volume_id).await?)
                }
            };
            let node = placement(&nodes, source_owner.as_deref())?;
            self.cluster
                .on(&node, |mut c| async move { c.create_volume(req).await })
                .await
        })
        .await
    }

    async fn delete_volume(
        &self,
        request: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let req = request.into_inner();
        respond(async move {
            require(&req.volume_id, "volume_id")?;
            match self.volume_owner(&req.volume_id).await? {
                // Gone from every node that could hold it: deleted already.
                None => Ok(csi::DeleteVolumeResponse {}),
                Some(node) => {
                    self.cluster
                        .on(&node, |mut c| async move { c.delete_volume(req).await })
                        .await
                }
            }
        })
        .await
    }

    async fn controller_publish_volume(
        &self,
        request: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        let req = request.into_inner();
        respond(async move {
            require(&req.volume_id, "volume_id")?;
            require(&req.node_id, "node_id")?;
            let node = self.volume_node(&req.volume_id).await?;
            self.cluster
                .on(&node, |mut c| async move {
                    c.controller_publish_volume(req).await
                })
                .await
        })
        .await
    }

    async fn controller_unpublish_volume(
        &self,
        request: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        respond(async move {
            require(&req.volume_id, "volume_id")?;
            match self.volume_owner(&req.volume_id).await? {
                None => Ok(csi::ControllerUnpublishVolumeResponse {}),
                Some(node) => {
                    self.cluster
                        .on(&node, |mut c| async move {
                            c.controller_unpublish_volume(req).await
                        })
                        .await
                }
            }
        })
        .await
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        respond(async move {
            require(&req.volume_id, "volume_id")?;
            if req.volume_capabilities.is_empty() {
                return Err(Status::invalid_argument("volume_capabilities is required"));
            }
            let node = self.volume_node(&req.volume_id).await?;
            self.cluster
                .on(&node, |mut c| async move {
                    c.validate_volume_capabilities(req).await
                })
                .await
        })
        .await
    }

    async fn list_volumes(
        &self,
        request: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        let req = request.into_inner();
        respond(async move {
            let all = self
                .ask_every_node(|mut c| async move {
                    c.list_volumes(csi::ListVolumesRequest::default()).await
                })
                .await?;
            let entries: Vec<_> = all.into_iter().flat_map(|(_, r)| r.entries).collect();
            let key = |e: &csi::list_volumes_response::Entry| {
                e.volume
                    .as_ref()
                    .map(|v| v.volume_id.clone())
                    .unwrap_or_default()
            };
            let (entries, next_token) = page(entries, key, &req.starting_token, req.max_entries)?;
            Ok(csi::ListVolumesResponse {
                entries,
                next_token,
            })
        })
        .await
    }

    async fn get_capacity(
        &self,
        request: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        let req = request.into_inner();
        respond(async move {
            if let Some(t) = &req.accessible_topology {
                // One node's capacity: what CSIStorageCapacity objects hold, per node.
                return match topology_node(t) {
                    Some(node) if self.cluster.has_node(node) => {
                        let node = node.to_string();
                        self.cluster
                            .on(&node, |mut c| async move { c.get_capacity(req).await })
                            .await
                    }
                    _ => Ok(csi::GetCapacityResponse {
                        available_capacity: 0,
                        maximum_volume_size: Some(0),
                        minimum_volume_size: None,
                    }),
                };
            }
            // The whole cluster: what all nodes have, and the largest volume one takes.
            let all = self
                .ask_every_node(|mut c| {
                    let req = req.clone();
                    async move { c.get_capacity(req).await }
                })
                .await?;
            let available = all
                .iter()
                .map(|(_, r)| r.available_capacity)
                .fold(0i64, i64::saturating_add);
            let largest = all
                .iter()
                .map(|(_, r)| r.maximum_volume_size.unwrap_or(r.available_capacity))
                .max()
                .unwrap_or(0);
            Ok(csi::GetCapacityResponse {
                available_capacity: available,
                maximum_volume_size: Some(largest),
                minimum_volume_size: all.iter().find_map(|(_, r)| r.minimum_volume_size),
            })
        })
        .await
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        respond(async {
            Ok(csi::ControllerGetCapabilitiesResponse {
                capabilities: crate::grpc::controller::capabilities(),
            })
        })
        .await
    }

    async fn create_snapshot(
        &self,
        request: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        let req = request.into_inner();
        respond(async move {
            require(&req.name, "name")?;
            require(&req.source_volume_id, "source_volume_id")?;
            let node = self.volume_node(&req.source_volume_id).await?;
            self.cluster
                .on(&node, |mut c| async move { c.create_snapshot(req).await })
                .await
        })
        .await
    }

    async fn delete_snapshot(
        &self,
        request: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        let req = request.into_inner();
        respond(async move {
            require(&req.snapshot_id, "snapshot_id")?;
            match self.snapshot_owner(&req.snapshot_id).await? {
                None => Ok(csi::DeleteSnapshotResponse {}),
                Some(node) => {
                    self.cluster
                        .on(&node, |mut c| async move { c.delete_snapshot(req).await })
                        .await
                }
            }
        })
        .await
    }

    async fn list_snapshots(
        &self,
        request: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        let req = request.into_inner();
        respond(async move {
            // A filter names one owner: that node answers the whole listing, with its
            // own tokens (the next pages go to the same node).
            let owner = if !req.snapshot_id.is_empty() {
                Some(self.snapshot_owner(&req.snapshot_id).await?)
            } else if !req.source_volume_id.is_empty() {
                Some(self.volume_owner(&req.source_volume_id).await?)
            } else {
                None
            };
            match owner {
                Some(None) => Ok(csi::ListSnapshotsResponse::default()),
                Some(Some(node)) => {
                    self.cluster
                        .on(&node, |mut c| async move { c.list_snapshots(req).await })
                        .await
                }
                None => {
                    let all = self
                        .ask_every_node(|mut c| async move {
                            c.list_snapshots(csi::ListSnapshotsRequest::default()).await
                        })
                        .await?;
                    let entries: Vec<_> = all.into_iter().flat_map(|(_, r)| r.entries).collect();
                    let key = |e: &csi::list_snapshots_response::Entry| {
                        e.snapshot
                            .as_ref()
                            .map(|s| s.snapshot_id.clone())
                            .unwrap_or_default()
                    };
                    let (entries, next_token) =
                        page(entries, key, &req.starting_token, req.max_entries)?;
                    Ok(csi::ListSnapshotsResponse {
                        entries,
                        next_token,
                    })
                }
            }
        })
        .await
    }

    async fn get_snapshot(
        &self,
        request: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        let req = request.into_inner();
        respond(async move {
            require(&req.snapshot_id, "snapshot_id")?;
            let node = self
                .snapshot_owner(&req.snapshot_id)
                .await?
                .ok_or_else(|| {
                    Status::not_found(format!("snapshot {} is on no node", req.snapshot_id))
                })?;
            self.cluster
                .on(&node, |mut c| async move { c.get_snapshot(req).await })
                .await
        })
        .await
    }

    async fn controller_expand_volume(
        &self,
        request: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        respond(async move {
            let id = req.volume_id.clone();
            self.at_volume(
                &id,
                |mut c| async move { c.controller_expand_volume(req).await },
            )
            .await
        })
        .await
    }

    async fn controller_get_volume(
        &self,
        request: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        let req = request.into_inner();
        respond(async move {
            let id = req.volume_id.clone();
            self.at_volume(
                &id,
                |mut c| async move { c.controller_get_volume(req).await },
            )
            .await
        })
        .await
    }

    async fn controller_modify_volume(
        &self,
        request: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        let req = request.into_inner();
        respond(async move {
            let id = req.volume_id.clone();
            self.at_volume(
                &id,
                |mut c| async move { c.controller_modify_volume(req).await },
            )
            .await
        })
        .await
    }
}
