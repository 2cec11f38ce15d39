//! Per-RPC plumbing shared by the services: the request id, one structured log line
//! per call, and running blocking volume-core work off the async executor.

use std::future::Future;
use std::time::{Duration, Instant};

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

/// How long a person's request (the admin service, the volume plugin) waits for
/// another operation on the same volume, such as a background replication step, to
/// end before it answers ABORTED. CSI calls are not kept waiting: their CO retries.
pub const BUSY_WAIT: Duration = Duration::from_secs(10);
const BUSY_POLL: Duration = Duration::from_millis(50);

/// Runs `f` again while the volume it works on is busy, for up to [`BUSY_WAIT`].
/// A busy claim is refused before anything is done, so running `f` again is safe.
pub fn retry_busy<T>(mut f: impl FnMut() -> volume_core::Result<T>) -> volume_core::Result<T> {
    let deadline = Instant::now() + BUSY_WAIT;
    loop {
        match f() {
            Err(volume_core::Error::Busy(_)) if Instant::now() < deadline => {
                std::thread::sleep(BUSY_POLL)
            }
            other => return other,
        }
    }
}

/// [`blocking`] for a person's request: waits out a busy volume ([`retry_busy`]).
pub async fn blocking_patient<T, F>(mut work: F) -> Result<T, Status>
where
    F: FnMut() -> Result<T, volume_core::Error> + Send + 'static,
    T: Send + 'static,
{
    blocking(move || retry_busy(&mut work)).await
}

/// Returns INVALID_ARGUMENT naming `field` when `value` is empty.
pub fn require(value: &str, field: &str) -> Result<(), Status> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!("{field} is required")))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_volume_is_waited_for_and_other_errors_are_not() {
        let mut calls = 0;
        let out = retry_busy(|| {
            calls += 1;
            if calls < 3 {
                Err(volume_core::Error::Busy("v".into()))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(out.unwrap(), 3);
        let mut calls = 0;
        let out: volume_core::Result<()> = retry_busy(|| {
            calls += 1;
            Err(volume_core::Error::VolumeNotFound("v".into()))
        });
        assert!(matches!(out, Err(volume_core::Error::VolumeNotFound(_))));
        assert_eq!(calls, 1, "only a busy volume is tried again");
    }
}
