//! Per-RPC plumbing shared by the services: the request id, one structured log line
//! per call, and running blocking volume-core work off the async executor.

use std::future::Future;
use std::time::Instant;

use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// gRPC metadata key a CO may use to correlate requests.
pub const REQUEST_ID_KEY: &str = "csi.requestid";

/// The request id from metadata, or a fresh one.
pub fn request_id(meta: &MetadataMap) -> String {
    meta.get(REQUEST_ID_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_string())
}

/// Runs one RPC body and logs one line with method, volume id, duration, code and
/// request id. Errors are logged here, where they are handled, and nowhere else.
pub async fn observe<T, F>(
    metrics: &crate::metrics::Metrics,
    method: &'static str,
    volume_id: &str,
    meta: &MetadataMap,
    body: F,
) -> Result<tonic::Response<T>, Status>
where
    F: Future<Output = Result<T, Status>>,
{
    let rid = request_id(meta);
    let start = Instant::now();
    let result = body.await;
    let elapsed = start.elapsed();
    metrics.observe(
        method,
        result.as_ref().map_or_else(|s| s.code(), |_| Code::Ok),
        elapsed,
    );
    let ms = elapsed.as_secs_f64() * 1000.0;
    match &result {
        Ok(_) => {
            tracing::info!(rpc = method, volume.id = volume_id, request.id = %rid, duration_ms = ms, code = "OK")
        }
        Err(s) if matches!(s.code(), Code::Internal | Code::Unknown) => {
            tracing::error!(rpc = method, volume.id = volume_id, request.id = %rid, duration_ms = ms, code = ?s.code(), error = s.message())
        }
        Err(s) => {
            tracing::warn!(rpc = method, volume.id = volume_id, request.id = %rid, duration_ms = ms, code = ?s.code(), error = s.message())
        }
    }
    result.map(tonic::Response::new)
}

/// Runs blocking work (mounts, mkfs, metadata commits) on the blocking pool and maps
/// volume-core errors to their CSI codes.
pub async fn blocking<T, F>(work: F) -> Result<T, Status>
where
    F: FnOnce() -> Result<T, volume_core::Error> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
        .map_err(|e| crate::status::to_status(&e))
}

/// Returns INVALID_ARGUMENT naming `field` when `value` is empty.
pub fn require(value: &str, field: &str) -> Result<(), Status> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!("{field} is required")))
    } else {
        Ok(())
    }
}
