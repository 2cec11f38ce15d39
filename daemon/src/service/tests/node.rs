//! A volume's life on this node: staged, published, grown, taken down; inline volumes.

use super::*;

#[tokio::test]
async fn a_volume_is_staged_published_and_taken_down_on_this_node() {
    use volume_core::manager::node::{PublishOptions, StageOptions};
    let f = fixture();
    let v = f
        .volumes
        .create(Caller::Orchestrator, new_volume("l", "loop", 64 << 20))
        .await
        .unwrap();
    let staging = f.dir.path().join("staging");
    let target = f.dir.path().join("pod/vol");
    f.volumes
        .stage(&v.id, staging.clone(), StageOptions::default())
        .await
        .unwrap();
    f.volumes
        .publish(
            &v.id,
            staging.clone(),
            target.clone(),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    let rec = f.volumes.get(Caller::Orchestrator, &v.id).await.unwrap();
    assert!(rec.staging.is_some() && rec.publications.len() == 1);
    assert_eq!(f.fake.attached().len(), 1, "the image is on a loop device");
    let (usage, health) = f.volumes.stats(&v.id, target.clone()).await.unwrap();
    assert!(
        usage.total_bytes > 0 && !health.abnormal,
        "{usage:?} {health:?}"
    );
    // Grown by the controller, then on the node where it is staged.
    let grown = f
        .volumes
        .expand(Caller::Orchestrator, &v.id, 128 << 20, 0)
        .await
        .unwrap();
    assert!(grown.node_expansion_required);
    assert_eq!(
        f.volumes
            .expand_on_node(&v.id, staging.clone())
            .await
            .unwrap(),
        128 << 20
    );
    // A person's expansion finishes on this node by itself.
    let by_person = f
        .volumes
        .expand(Caller::Person, "l", 192 << 20, 0)
        .await
        .unwrap();
    assert!(!by_person.node_expansion_required);
    assert_eq!(by_person.volume.filesystem_bytes(), 192 << 20);
    f.volumes.unpublish(&v.id, target).await.unwrap();
    f.volumes.unstage(&v.id, staging).await.unwrap();
    let rec = f.volumes.get(Caller::Orchestrator, &v.id).await.unwrap();
    assert!(rec.staging.is_none() && rec.publications.is_empty());
    assert!(f.fake.attached().is_empty());
}

#[tokio::test]
async fn an_inline_volume_lives_from_publish_to_unpublish_and_its_layers_must_exist() {
    use volume_core::manager::ephemeral::EPHEMERAL_KEY;
    use volume_core::manager::node::PublishOptions;
    let f = fixture();
    let target = f.dir.path().join("pod/inline");
    let ctx = HashMap::from([
        (EPHEMERAL_KEY.to_string(), "true".to_string()),
        ("kind".to_string(), "dir".to_string()),
        ("size".to_string(), "16MiB".to_string()),
    ]);
    let rec = f
        .volumes
        .publish_ephemeral(
            "csi-pod-1",
            target.clone(),
            ctx.clone(),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    assert!(rec.ephemeral);
    f.volumes.unpublish("csi-pod-1", target).await.unwrap();
    assert!(
        f.volumes
            .driver()
            .manager
            .list(None, 10)
            .unwrap()
            .is_empty(),
        "the inline volume goes with its last publication"
    );
    let mut image = ctx;
    image.insert("kind".into(), "image".into());
    image.insert(
        volume_core::params::LAYERS.into(),
        format!("sha256:{}", "ab".repeat(32)),
    );
    let e = f
        .volumes
        .publish_ephemeral(
            "csi-pod-2",
            f.dir.path().join("pod/img"),
            image,
            PublishOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(e), Code::InvalidArgument);
}
