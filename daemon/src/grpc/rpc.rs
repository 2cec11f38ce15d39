//! Per-RPC plumbing shared by the services: answering a call, checking required
//! fields, and running blocking volume-core work off the async executor.

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::Status;

/// Answers a call with what `body` gives (the per-call logging and metrics are the
/// [`ObserveLayer`](crate::grpc::observe::ObserveLayer)'s).
pub async fn respond<T>(
    body: impl Future<Output = Result<T, Status>>,
) -> Result<tonic::Response<T>, Status> {
    body.await.map(tonic::Response::new)
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
        .map_err(|e| crate::grpc::status::to_status(&e))
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
