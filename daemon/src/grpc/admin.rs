//! Stowage's admin service (stowage.proto), served beside CSI on the same socket: what
//! `vol` speaks. It works in names as people do (ids are accepted too) and adds what
//! CSI has no words for, such as attaching a volume into a running container.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use stowage_proto::stowage::v1 as pb;
use stowage_proto::stowage::v1::admin_server::Admin;
use tonic::{Request, Response, Status};
use volume_core::manager::snapshot::SnapshotFilter;

use crate::driver::Driver;
use crate::grpc::convert::{to_pb_layer, to_pb_snapshot, to_pb_volume};
use crate::grpc::rpc::require;
use crate::service::create::CopyOf;
use crate::service::layers::Imported;
use crate::service::{Caller, NewVolume, Volumes};

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    driver: Arc<Driver>,
    volumes: Volumes,
}

impl AdminService {
    /// Serves the admin API for `driver`.
    pub fn new(driver: Arc<Driver>) -> Self {
        let volumes = Volumes::new(Arc::clone(&driver));
        AdminService { driver, volumes }
    }
}

/// The answer naming one volume, as a person sees it.
async fn volume_response(
    volumes: &Volumes,
    rec: volume_core::VolumeRecord,
) -> Result<pb::VolumeResponse, Status> {
    let view = volumes.view(Caller::Person, rec).await?;
    Ok(pb::VolumeResponse {
        volume: Some(to_pb_volume(volumes.driver(), &view)),
    })
}

/// The response to an import: each layer's metadata, and whether it was already there.
fn import_response(imported: &[Imported]) -> pb::ImportLayerResponse {
    pb::ImportLayerResponse {
        layers: imported.iter().map(|l| to_pb_layer(&l.info)).collect(),
        deduplicated: imported.iter().map(|l| l.deduplicated).collect(),
    }
}

/// A blocking reader over the chunks of a client's stream.
struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(Ok(c)) => {
                    self.chunk = c;
                    self.at = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Splits admin create parameters into volume parameters and mutable ones.
fn split_parameters(
    params: &HashMap<String, String>,
) -> (HashMap<String, String>, HashMap<String, String>) {
    let mut fixed = HashMap::new();
    let mut mutable = HashMap::new();
    for (k, v) in params {
        if k == volume_core::manager::modify::COMPRESSION {
            mutable.insert(k.clone(), v.clone());
        } else {
            fixed.insert(k.clone(), v.clone());
        }
    }
    (fixed, mutable)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn version(
        &self,
        _request: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        let driver = Arc::clone(&self.driver);
        crate::grpc::rpc::respond(async move {
            Ok(pb::VersionResponse {
                version: env!("CARGO_PKG_VERSION").to_string(),
                driver_name: crate::DRIVER_NAME.to_string(),
                node_id: driver.config.node_id.clone(),
            })
        })
        .await
    }

    async fn create_volume(
        &self,
        request: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::VolumeResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::rpc::respond(async move {
            require(&req.name, "name")?;
            let (parameters, mutable_parameters) = split_parameters(&req.parameters);
            let new = NewVolume {
                name: req.name.clone(),
                required_bytes: req.capacity_bytes,
                parameters,
                mutable_parameters,
                ..NewVolume::default()
            };
            let rec = volumes.create(Caller::Person, new).await?;
            volume_response(&volumes, rec).await
        })
        .await
    }

    async fn list_volumes(
        &self,
        _request: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let volumes = self.volumes.clone();
        crate::grpc::rpc::respond(async move {
            let mut views = volumes.list(Caller::Person, None, usize::MAX).await?;
            views.sort_by(|a, b| a.volume.name.cmp(&b.volume.name));
            Ok(pb::ListVolumesResponse {
                volumes: views
                    .iter()
                    .map(|v| to_pb_volume(volumes.driver(), v))
                    .collect(),
            })
        })
        .await
    }

    async fn get_volume(
        &self,
        request: Request<pb::GetVolumeRequest>,
    ) -> Result<Response<pb::VolumeResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::rpc::respond(async move {
            require(&req.volume, "volume")?;
            let view = volumes.show(Caller::Person, &req.volume).await?;
            Ok(pb::VolumeResponse {
                volume: Some(to_pb_volume(volumes.driver(), &view)),
            })
        })
        .await
    }

    async fn delete_volume(
        &self,
        request: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::rpc::respond(async move {
            require(&req.volume, "volume")?;
            volumes.delete(Caller::Person, &req.volume).await?;
            Ok(pb::DeleteVolumeResponse {})
        })
        .await
    }

    async fn clone_volume(
        &self,
        request: Request<pb::CloneVolumeRequest>,
    ) -> Result<Response<pb::VolumeResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::rpc::respond(async move {
            require(&req.name, "name")?;
            let of = match (req.source.is_empty(), req.snapshot.is_empty()) {
                (false, true) => CopyOf::Volume(req.source.clone()),
                (true, false) => CopyOf::Snapshot(req.snapshot.clone()),
                _ => {
                    return Err(Status::invalid_argument(
                        "give exactly one of a source volume or a snapshot",
                    ));
                }
            };
            let rec = volumes
                .create_copy(Caller::Person, &req.name, of, req.capacity_bytes)
                .await?;
            volume_response(&volumes, rec).await
        })
        .await
    }

    async fn expand_volume(
        &self,
        request: Request<pb::ExpandVolumeRequest>,
    ) -> Result<Response<pb::VolumeResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::rpc::respond(async move {
            require(&req.volume, "volume")?;
            let expanded = volumes
                .expand(Caller::Person, &req.volume, req.capacity_bytes, 0)
                .await?;
            volume_response(&volumes, expanded.volume).await
        })
        .await
    }

    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::rpc::respond(async move {
            require(&req.volume, "volume")?;
            require(&req.name, "name")?;
            let snap = volumes
                .snapshot(Caller::Person, &req.volume, &req.name)
                .await?;
            Ok(pb::SnapshotResponse {
                snapshot: Some(to_pb_snapshot(&snap)),
            })
        })
        .await
    }

    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::rpc::respond(async move {
            let source_volume_id = if req.volume.is_empty() {
                None
            } else {
                Some(volumes.get(Caller::Person, &req.volume).await?.id)
            };
            let filter = SnapshotFilter {
                snapshot_id: None,
                source_volume_id,
            };
            let snaps = volumes
                .snapshots(Caller::Person, filter, None, usize::MAX)
                .await?;
            Ok(pb::ListSnapshotsResponse {
                snapshots: snaps.iter().map(to_pb_snapshot).collect(),
            })
        })
        .await
    }

    async fn delete_snapshot(
        &self,
        request: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::rpc::respond(async move {
            require(&req.snapshot, "snapshot")?;
            volumes
                .delete_snapshot(Caller::Person, &req.snapshot)
                .await?;
            Ok(pb::DeleteSnapshotResponse {})
        })
        .await
    }

    async fn attach_volume(
        &self,
        request: Request<pb::AttachVolumeRequest>,
    ) -> Result<Response<pb::AttachVolumeResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::rpc::respond(async move {
            require(&req.volume, "volume")?;
            require(&req.target, "target")?;
            let target = PathBuf::from(&req.target);
            let rec = volumes
                .attach_into(&req.volume, req.pid, target, req.read_only)
                .await?;
            Ok(pb::AttachVolumeResponse {
                volume: volume_response(&volumes, rec).await?.volume,
            })
        })
        .await
    }

    async fn detach_volume(
        &self,
        request: Request<pb::DetachVolumeRequest>,
    ) -> Result<Response<pb::DetachVolumeResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::rpc::respond(async move {
            require(&req.volume, "volume")?;
            require(&req.target, "target")?;
            let target = PathBuf::from(&req.target);
            volumes.detach_from(&req.volume, req.pid, target).await?;
            Ok(pb::DetachVolumeResponse {})
        })
        .await
    }

    async fn import_layer(
        &self,
        request: Request<tonic::Streaming<pb::ImportLayerChunk>>,
    ) -> Result<Response<pb::ImportLayerResponse>, Status> {
        let mut stream = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::rpc::respond(async move {
            let first = stream
                .message()
                .await?
                .ok_or_else(|| Status::invalid_argument("no layer data was sent"))?;
            if !first.oci_layout_path.is_empty() {
                if !first.data.is_empty() || stream.message().await?.is_some() {
                    return Err(Status::invalid_argument(
                        "send either an OCI layout path or tarball data, not both",
                    ));
                }
                let path = PathBuf::from(&first.oci_layout_path);
                let imported = volumes.import_oci_layout(path).await?;
                return Ok(import_response(&imported));
            }
            // The tarball: chunks go through a bounded channel to the blocking
            // import, which reads them as a stream (never the whole blob in memory).
            let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(8);
            let reader = ChunkReader {
                rx,
                chunk: Vec::new(),
                at: 0,
            };
            let import = volumes.import_tar(reader);
            let forward = async move {
                let mut next = Some(first);
                loop {
                    let chunk = match next.take() {
                        Some(c) => Ok(c.data),
                        None => match stream.message().await {
                            Ok(Some(c)) if !c.oci_layout_path.is_empty() => Err(
                                std::io::Error::other("an OCI layout path may only come first"),
                            ),
                            Ok(Some(c)) => Ok(c.data.to_vec()),
                            Ok(None) => break,
                            Err(s) => Err(std::io::Error::other(format!(
                                "the client's stream failed: {}",
                                s.message()
                            ))),
                        },
                    };
                    let failed = chunk.is_err();
                    // A closed channel: the import stopped (and says why).
                    if tx.send(chunk).await.is_err() || failed {
                        break;
                    }
                }
            };
            let (result, ()) = tokio::join!(import, forward);
            Ok(import_response(&[result?]))
        })
        .await
    }

    async fn list_layers(
        &self,
        _request: Request<pb::ListLayersRequest>,
    ) -> Result<Response<pb::ListLayersResponse>, Status> {
        let volumes = self.volumes.clone();
        crate::grpc::rpc::respond(async move {
            let list = volumes.layers().await?;
            Ok(pb::ListLayersResponse {
                layers: list.iter().map(to_pb_layer).collect(),
            })
        })
        .await
    }

    async fn remove_layer(
        &self,
        request: Request<pb::RemoveLayerRequest>,
    ) -> Result<Response<pb::RemoveLayerResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::rpc::respond(async move {
            require(&req.layer, "layer")?;
            volumes.remove_layer(&req.layer).await?;
            Ok(pb::RemoveLayerResponse {})
        })
        .await
    }

    async fn peer_hello(
        &self,
        request: Request<pb::PeerHelloRequest>,
    ) -> Result<Response<pb::HelloResponse>, Status> {
        let req = request.into_inner();
        let driver = Arc::clone(&self.driver);
        crate::grpc::rpc::respond(async move {
            require(&req.node_id, "node_id")?;
            let mut client = driver
                .config
                .peers
                .connect(&req.node_id)
                .await
                .map_err(|e| crate::grpc::status::peer_status(&e))?;
            let hello = client
                .hello(pb::HelloRequest {
                    node_id: driver.config.node_id.clone(),
                })
                .await?;
            Ok(hello.into_inner())
        })
        .await
    }

    async fn replicate_volume(
        &self,
        request: Request<pb::ReplicateVolumeRequest>,
    ) -> Result<Response<pb::ReplicateVolumeResponse>, Status> {
        let req = request.into_inner();
        let driver = Arc::clone(&self.driver);
        crate::grpc::observe::volume(&req.volume);
        crate::grpc::rpc::respond(async move {
            require(&req.volume, "volume")?;
            require(&req.to_node_id, "to_node_id")?;
            crate::replication::replicate(&driver, &req.volume, &req.to_node_id).await
        })
        .await
    }

    async fn list_replicas(
        &self,
        _request: Request<pb::ListReplicasRequest>,
    ) -> Result<Response<pb::ListReplicasResponse>, Status> {
        let volumes = self.volumes.clone();
        crate::grpc::rpc::respond(async move {
            let replicas = volumes
                .replicas()
                .await?
                .into_iter()
                .map(|view| {
                    let r = view.replica;
                    let latest = r.snapshots.last();
                    pb::Replica {
                        latest_path: view
                            .latest_path
                            .map(|p| p.display().to_string())
                            .unwrap_or_default(),
                        latest_stream_bytes: latest.map(|s| s.stream_bytes).unwrap_or(0),
                        latest_taken_at: latest.map(|s| s.taken_at).unwrap_or(0),
                        snapshots: r.snapshots.iter().map(|s| s.name.clone()).collect(),
                        volume_id: r.id,
                        name: r.name,
                        kind: r.kind.to_string(),
                        fs_type: r.fs.map(|f| f.to_string()).unwrap_or_default(),
                        capacity_bytes: r.capacity,
                        source_node_id: r.source_node_id,
                        generation: r.generation.max(1),
                        split_brain: r.split_brain.unwrap_or_default(),
                    }
                })
                .collect();
            Ok(pb::ListReplicasResponse { replicas })
        })
        .await
    }

    async fn promote_volume(
        &self,
        request: Request<pb::PromoteVolumeRequest>,
    ) -> Result<Response<pb::VolumeResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::observe::volume(&req.volume);
        crate::grpc::rpc::respond(async move {
            require(&req.volume, "volume")?;
            let rec = volumes.promote(&req.volume).await?;
            volume_response(&volumes, rec).await
        })
        .await
    }

    async fn modify_volume(
        &self,
        request: Request<pb::ModifyVolumeRequest>,
    ) -> Result<Response<pb::VolumeResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::observe::volume(&req.volume);
        crate::grpc::rpc::respond(async move {
            require(&req.volume, "volume")?;
            let rec = volumes
                .modify(
                    Caller::Person,
                    &req.volume,
                    req.parameters.into_iter().collect(),
                )
                .await?;
            volume_response(&volumes, rec).await
        })
        .await
    }

    async fn remove_replica(
        &self,
        request: Request<pb::RemoveReplicaRequest>,
    ) -> Result<Response<pb::RemoveReplicaResponse>, Status> {
        let req = request.into_inner();
        let driver = Arc::clone(&self.driver);
        crate::grpc::observe::volume(&req.volume);
        crate::grpc::rpc::respond(async move {
            require(&req.volume, "volume")?;
            Volumes::new(driver).remove_replica(&req.volume).await?;
            Ok(pb::RemoveReplicaResponse {})
        })
        .await
    }
}
