//! Prometheus metrics and the health endpoint. Every RPC is timed into
//! `csi_plugin_operations_seconds{driver_name,method_name,grpc_status_code}` (the name
//! and labels the Kubernetes CSI sidecars use, so existing dashboards work); pool and
//! volume gauges are read fresh at each scrape; `/healthz` runs the same check as Probe.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use volume_core::{VolumeKind, VolumeManager};

use crate::DRIVER_NAME;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    driver_name: String,
    method_name: String,
    grpc_status_code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    volume_id: String,
    node_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaStateLabels {
    volume_id: String,
    node_id: String,
    state: String,
}

/// Replica states a link can be in (one gauge per state, 1 for the current one).
const REPLICA_STATES: [&str; 4] = ["syncing", "in sync", "degraded", "diverged"];

/// The daemon's metrics registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    operations: Family<OpLabels, Histogram>,
    errors: Family<OpLabels, Counter>,
    pool_capacity: Gauge,
    pool_available: Gauge,
    pool_usable: Gauge,
    volumes: Family<KindLabels, Gauge>,
    staged: Gauge,
    published: Gauge,
    inflight: Gauge,
    replica_lag_seconds: Family<ReplicaLabels, Gauge>,
    replica_lag_bytes: Family<ReplicaLabels, Gauge>,
    replica_state: Family<ReplicaStateLabels, Gauge>,
    split_brains: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty registry with Stowage's metrics registered.
    pub fn new() -> Self {
        let operations = Family::<OpLabels, Histogram>::new_with_constructor(|| {
            // 1 ms .. ~65 s: from a GetCapacity to a mkfs.xfs of a large image.
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ])
        });
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            operations,
            errors: Family::default(),
            pool_capacity: Gauge::default(),
            pool_available: Gauge::default(),
            pool_usable: Gauge::default(),
            volumes: Family::default(),
            staged: Gauge::default(),
            published: Gauge::default(),
            inflight: Gauge::default(),
            replica_lag_seconds: Family::default(),
            replica_lag_bytes: Family::default(),
            replica_state: Family::default(),
            split_brains: Counter::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|e| e.into_inner());
            r.register(
                "csi_plugin_operations_seconds",
                "Duration of CSI operations",
                m.operations.clone(),
            );
            r.register(
                "stowage_operation_errors",
                "CSI operations that returned an error",
                m.errors.clone(),
            );
            r.register(
                "stowage_pool_capacity_bytes",
                "Size of the pool",
                m.pool_capacity.clone(),
            );
            r.register(
                "stowage_pool_available_bytes",
                "Bytes a new volume can still use",
                m.pool_available.clone(),
            );
            r.register(
                "stowage_pool_usable",
                "1 when the pool is mounted and writable, 0 when it is lost (see the log)",
                m.pool_usable.clone(),
            );
            r.register("stowage_volumes", "Volumes by kind", m.volumes.clone());
            r.register(
                "stowage_staged_volumes",
                "Volumes staged on this node",
                m.staged.clone(),
            );
            r.register(
                "stowage_published_targets",
                "Target paths volumes are published at",
                m.published.clone(),
            );
            r.register(
                "stowage_operations_in_flight",
                "Volume operations currently running",
                m.inflight.clone(),
            );
            r.register(
                "stowage_replica_lag_seconds",
                "Age of the copy a replica node holds (now minus when its snapshot was taken)",
                m.replica_lag_seconds.clone(),
            );
            r.register(
                "stowage_replica_lag_bytes",
                "Stream bytes still to deliver to a replica node, as of the last attempt",
                m.replica_lag_bytes.clone(),
            );
            r.register(
                "stowage_replica_state",
                "1 for the state a replica link is in (syncing, in sync, degraded, diverged)",
                m.replica_state.clone(),
            );
            r.register(
                "stowage_split_brains",
                "Times this node found another node holding a newer generation of its volume",
                m.split_brains.clone(),
            );
        }
        m
    }

    /// Records one finished RPC.
    pub fn observe(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        let labels = OpLabels {
            driver_name: DRIVER_NAME.to_string(),
            method_name: method.to_string(),
            grpc_status_code: format!("{code:?}"),
        };
        self.operations
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if code != tonic::Code::Ok {
            self.errors.get_or_create(&labels).inc();
        }
    }

    /// Reads the pool and volume gauges afresh from `manager` (blocking: statvfs and
    /// a metadata read).
    pub fn refresh(&self, manager: &VolumeManager) -> Result<(), volume_core::Error> {
        self.pool_usable
            .set(i64::from(manager.pool_problem().is_none()));
        let usage = manager.capacity()?;
        self.pool_capacity
            .set(i64::try_from(usage.total).unwrap_or(i64::MAX));
        self.pool_available
            .set(i64::try_from(usage.available).unwrap_or(i64::MAX));
        let vols = manager.list(None, usize::MAX)?;
        for kind in [VolumeKind::Dir, VolumeKind::Loop, VolumeKind::Image] {
            let n = vols.iter().filter(|v| v.kind == kind).count();
            self.volumes
                .get_or_create(&KindLabels {
                    kind: kind.to_string(),
                })
                .set(n as i64);
        }
        self.staged
            .set(vols.iter().filter(|v| v.staging.is_some()).count() as i64);
        self.published
            .set(vols.iter().map(|v| v.publications.len()).sum::<usize>() as i64);
        self.inflight.set(manager.inflight().len() as i64);
        Ok(())
    }

    /// Counts one split brain seen.
    pub fn split_brain(&self) {
        self.split_brains.inc();
    }

    /// Replaces the replica gauges with `links` (volume id, status of one replica
    /// node).
    pub fn set_replicas(&self, links: &[(String, stowage_proto::stowage::v1::ReplicaStatus)]) {
        self.replica_lag_seconds.clear();
        self.replica_lag_bytes.clear();
        self.replica_state.clear();
        for (volume_id, s) in links {
            let labels = ReplicaLabels {
                volume_id: volume_id.clone(),
                node_id: s.node_id.clone(),
            };
            self.replica_lag_seconds
                .get_or_create(&labels)
                .set(i64::try_from(s.lag_seconds).unwrap_or(i64::MAX));
            self.replica_lag_bytes
                .get_or_create(&labels)
                .set(i64::try_from(s.lag_bytes).unwrap_or(i64::MAX));
            for state in REPLICA_STATES {
                self.replica_state
                    .get_or_create(&ReplicaStateLabels {
                        volume_id: volume_id.clone(),
                        node_id: s.node_id.clone(),
                        state: state.to_string(),
                    })
                    .set(i64::from(s.state == state));
            }
        }
    }

    /// The registry in the Prometheus/OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &r);
        out
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    manager: Arc<VolumeManager>,
}

async fn metrics_handler(State(s): State<HttpState>) -> impl IntoResponse {
    let fresh = s.clone();
    match tokio::task::spawn_blocking(move || fresh.metrics.refresh(&fresh.manager)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %crate::grpc::status::chain(&e), "metrics refresh failed")
        }
        Err(e) => tracing::warn!(error = %e, "metrics refresh task failed"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn healthz_handler(State(s): State<HttpState>) -> impl IntoResponse {
    // Liveness: the daemon answers and its pool's path can be examined. Whether the
    // pool is usable (mounted, writable) is the CSI Probe's answer and the
    // stowage_pool_usable gauge's: a restart would not mend a read-only pool, and a
    // daemon restarting in a loop could not unpublish what is still mounted.
    let manager = Arc::clone(&s.manager);
    match tokio::task::spawn_blocking(move || manager.pool_reachable()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n".to_string()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("pool unavailable: {}\n", crate::grpc::status::chain(&e)),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("check failed: {e}\n"),
        ),
    }
}

/// Serves `/metrics` and `/healthz` on `addr` until `shutdown` completes.
pub async fn serve_http(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    manager: Arc<VolumeManager>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz_handler))
        .with_state(HttpState { metrics, manager });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_carries_the_sidecar_labels() {
        let m = Metrics::new();
        m.observe("CreateVolume", tonic::Code::Ok, Duration::from_millis(3));
        m.observe("CreateVolume", tonic::Code::Ok, Duration::from_millis(4));
        m.observe(
            "DeleteVolume",
            tonic::Code::NotFound,
            Duration::from_millis(1),
        );
        let text = m.render();
        assert!(
            text.contains(
                "csi_plugin_operations_seconds_count{driver_name=\"csi.stowage.dev\",method_name=\"CreateVolume\",grpc_status_code=\"Ok\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("grpc_status_code=\"NotFound\""), "{text}");
        assert!(
            text.contains("stowage_operation_errors_total{driver_name=\"csi.stowage.dev\",method_name=\"DeleteVolume\",grpc_status_code=\"NotFound\"} 1"),
            "{text}"
        );
    }
}
