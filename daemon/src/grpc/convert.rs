//! Conversions between the daemon's records and the wire's messages: CSI's (volumes,
//! snapshots, conditions, content sources; reading a volume capability) and
//! stowage.proto's admin views.

use layer_store::LayerInfo;
use stowage_proto::csi::v1 as csi;
use stowage_proto::stowage::v1 as pb;
use volume_core::model::VolumeHealth;
use volume_core::{ContentSource, SnapshotRecord, VolumeRecord};

use crate::driver::Driver;
use crate::service::VolumeView;

/// The CSI view of a volume record; its context is the parameters it was created
/// with and [`crate::driver::LAYOUT_CONTEXT_KEY`].
pub fn csi_volume(driver: &Driver, rec: &VolumeRecord) -> csi::Volume {
    csi::Volume {
        capacity_bytes: i64::try_from(rec.capacity).unwrap_or(i64::MAX),
        volume_id: rec.id.clone(),
        volume_context: rec
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain(std::iter::once((
                crate::driver::LAYOUT_CONTEXT_KEY.to_string(),
                driver.manager.layout_of(rec).to_string(),
            )))
            .collect(),
        content_source: rec.content_source.as_ref().map(content_source),
        // Only where the volume can be staged: this node, its primary. A replica node
        // holds a copy it cannot stage until promoted (a scheduler told otherwise puts
        // pods where NodeStage fails).
        accessible_topology: vec![driver.topology()],
    }
}

/// The CSI form of a volume's content source.
pub fn content_source(src: &ContentSource) -> csi::VolumeContentSource {
    use csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
    csi::VolumeContentSource {
        r#type: Some(match src {
            ContentSource::Snapshot(id) => Type::Snapshot(SnapshotSource {
                snapshot_id: id.clone(),
            }),
            ContentSource::Volume(id) => Type::Volume(VolumeSource {
                volume_id: id.clone(),
            }),
        }),
    }
}

/// The CSI view of a snapshot record.
pub fn to_csi_snapshot(s: &SnapshotRecord) -> csi::Snapshot {
    csi::Snapshot {
        size_bytes: i64::try_from(s.size_bytes).unwrap_or(i64::MAX),
        snapshot_id: s.id.clone(),
        source_volume_id: s.source_volume_id.clone(),
        creation_time: Some(prost_types::Timestamp {
            seconds: i64::try_from(s.created_at).unwrap_or(i64::MAX),
            nanos: i32::try_from(s.created_nanos).unwrap_or(0),
        }),
        ready_to_use: true,
        group_snapshot_id: s.group_id.clone().unwrap_or_default(),
    }
}

/// The CSI condition of a health value.
pub fn condition(h: &VolumeHealth) -> csi::VolumeCondition {
    csi::VolumeCondition {
        abnormal: h.abnormal,
        message: h.message.clone(),
    }
}

/// Checks that a capability is one this driver serves; the error says why not.
pub fn check_capability(cap: &csi::VolumeCapability) -> Result<(), String> {
    use csi::volume_capability::access_mode::Mode;
    if cap.access_type.is_none() {
        return Err("volume capability has no access type".into());
    }
    let mode = cap
        .access_mode
        .as_ref()
        .map(|m| Mode::try_from(m.mode).unwrap_or(Mode::Unknown))
        .unwrap_or(Mode::Unknown);
    match mode {
        Mode::SingleNodeWriter
        | Mode::SingleNodeReaderOnly
        | Mode::SingleNodeSingleWriter
        | Mode::SingleNodeMultiWriter => Ok(()),
        Mode::Unknown => Err("volume capability has no access mode".into()),
        // A volume lives in one node's pool: no other node can mount it.
        other => Err(format!(
            "access mode {} is not supported: volumes are local to one node",
            other.as_str_name()
        )),
    }
}

/// The mount fs_type of a capability, if it names one.
pub fn mount_fs_type(cap: &csi::VolumeCapability) -> Option<&str> {
    match &cap.access_type {
        Some(csi::volume_capability::AccessType::Mount(m)) if !m.fs_type.is_empty() => {
            Some(m.fs_type.as_str())
        }
        _ => None,
    }
}

/// The mount flags of a capability.
pub fn mount_flags(cap: &csi::VolumeCapability) -> Vec<String> {
    match &cap.access_type {
        Some(csi::volume_capability::AccessType::Mount(m)) => m.mount_flags.clone(),
        _ => Vec::new(),
    }
}

/// True when the capability asks for raw block access.
pub fn is_block(cap: &csi::VolumeCapability) -> bool {
    matches!(
        cap.access_type,
        Some(csi::volume_capability::AccessType::Block(_))
    )
}

/// True when the capability's access mode is SINGLE_NODE_SINGLE_WRITER.
pub fn is_single_writer(cap: &csi::VolumeCapability) -> bool {
    use csi::volume_capability::access_mode::Mode;
    cap.access_mode
        .as_ref()
        .is_some_and(|m| Mode::try_from(m.mode) == Ok(Mode::SingleNodeSingleWriter))
}

/// True when the capability's access mode allows no writes.
pub fn is_reader_only(cap: &csi::VolumeCapability) -> bool {
    use csi::volume_capability::access_mode::Mode;
    cap.access_mode.as_ref().is_some_and(|m| {
        matches!(
            Mode::try_from(m.mode),
            Ok(Mode::SingleNodeReaderOnly) | Ok(Mode::MultiNodeReaderOnly)
        )
    })
}

/// The admin view of a volume.
pub fn to_pb_volume(driver: &Driver, view: &VolumeView) -> pb::Volume {
    let (rec, health) = (&view.volume, view.health.clone());
    pb::Volume {
        id: rec.id.clone(),
        name: rec.name.clone(),
        kind: rec.kind.to_string(),
        layout: view.layout.to_string(),
        fs_type: rec.fs.map(|f| f.to_string()).unwrap_or_default(),
        capacity_bytes: rec.capacity,
        capacity_enforced: rec.capacity_enforced,
        created_at: rec.created_at,
        staging_path: rec
            .staging
            .as_ref()
            .map(|s| s.path.display().to_string())
            .unwrap_or_default(),
        published_at: rec
            .publications
            .iter()
            .map(|p| p.target.display().to_string())
            .collect(),
        attached_nodes: rec.attachments.iter().map(|a| a.node_id.clone()).collect(),
        content_source: match &rec.content_source {
            Some(ContentSource::Snapshot(s)) => format!("snapshot:{s}"),
            Some(ContentSource::Volume(v)) => format!("volume:{v}"),
            None => String::new(),
        },
        parameters: rec.parameters.clone().into_iter().collect(),
        mutable_parameters: rec.mutable_parameters.clone().into_iter().collect(),
        condition: Some(pb::Condition {
            abnormal: health.abnormal,
            message: health.message,
        }),
        ephemeral: rec.ephemeral,
        attached_into: rec
            .container_mounts
            .iter()
            .map(|m| format!("{}:{}", m.pid, m.target.display()))
            .collect(),
        replicas: crate::replication::statuses(driver, rec),
        generation: rec.generation.max(1),
        copies: rec.replication.as_ref().map(|s| s.copies).unwrap_or(1),
        replication_interval_secs: rec
            .replication
            .as_ref()
            .map(|s| s.interval_secs)
            .unwrap_or(0),
    }
}

/// The admin view of a stored layer.
pub fn to_pb_layer(l: &LayerInfo) -> pb::Layer {
    pb::Layer {
        key: l.key.to_string(),
        diff_id: l.diff_id.clone(),
        size_bytes: l.size,
        entries: l.entries,
        blobs: l.blobs.iter().map(|b| b.digest.clone()).collect(),
        imported_at: l.imported_at,
    }
}

/// The admin view of a snapshot.
pub fn to_pb_snapshot(s: &SnapshotRecord) -> pb::Snapshot {
    pb::Snapshot {
        id: s.id.clone(),
        name: s.name.clone(),
        source_volume_id: s.source_volume_id.clone(),
        size_bytes: s.size_bytes,
        created_at: s.created_at,
        group_id: s.group_id.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TOPOLOGY_KEY;
    use crate::service::Caller;
    use crate::service::tests::volumes;

    #[tokio::test]
    async fn a_replicated_volume_is_accessible_only_where_it_can_be_staged() {
        let (_dir, volumes) = volumes();
        let mut new = crate::service::NewVolume {
            name: "rep".into(),
            required_bytes: 1 << 20,
            ..Default::default()
        };
        new.parameters.insert("kind".into(), "dir".into());
        let mut rec = volumes.create(Caller::Orchestrator, new).await.unwrap();
        rec.replication = Some(volume_core::ReplicationSpec {
            copies: 3,
            interval_secs: 60,
            nodes: vec!["b".into(), "c".into()],
        });
        let topology = csi_volume(volumes.driver(), &rec).accessible_topology;
        assert_eq!(topology.len(), 1, "{topology:?}");
        assert_eq!(
            topology[0].segments[TOPOLOGY_KEY],
            volumes.driver().config.node_id
        );
    }
}
