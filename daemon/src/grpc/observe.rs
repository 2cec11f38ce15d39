//! The one tower layer every gRPC call passes: it names the call from its request path,
//! takes the CO's request id (or makes one), runs the handler inside an `rpc` span, and
//! when the answer is ready records the call in the metrics and logs one line with its
//! duration and code. Handlers add the volume they act on with [`volume`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::Code;
use tonic::codegen::http;
use tracing::Instrument;

use crate::metrics::Metrics;

/// gRPC metadata key a CO may use to correlate requests.
pub const REQUEST_ID_KEY: &str = "csi.requestid";

/// Records the volume the current call acts on in its `rpc` span (and so in its log
/// line). Outside a call it does nothing.
pub fn volume(id: &str) {
    tracing::Span::current().record("volume.id", id);
}

/// The metrics label of the call at `path` (`/package.Service/Method`): the bare
/// method for CSI's services (`CreateVolume`, as the CSI sidecars name them),
/// `Service.Method` for Stowage's own (`Admin.CreateVolume`, `Peer.Hello`).
pub fn method_label(path: &str) -> String {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (service, method) = match (parts.next(), parts.next()) {
        (Some(s), Some(m)) if !m.is_empty() => (s, m),
        _ => return path.to_string(),
    };
    match service.rsplit_once('.') {
        Some((package, _)) if package.starts_with("csi.") => method.to_string(),
        Some((_, name)) => format!("{name}.{method}"),
        None => format!("{service}.{method}"),
    }
}

/// The layer: add it to a tonic server builder with `.layer(ObserveLayer::new(metrics))`.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    /// Records every call in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        ObserveLayer { metrics }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The service [`ObserveLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let rid = req
            .headers()
            .get(REQUEST_ID_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_string());
        let span = tracing::info_span!(
            "rpc",
            rpc = %method,
            request.id = %rid,
            volume.id = tracing::field::Empty
        );
        // The clone that was made ready is the one called (tower's rule for services
        // whose clones do not share readiness).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = Arc::clone(&self.metrics);
        Box::pin(async move {
            let start = Instant::now();
            let result = inner.call(req).instrument(span.clone()).await;
            let elapsed = start.elapsed();
            // An error answer carries its status in the headers (trailers-only); a
            // success carries OK in the trailers, after the body.
            let status = match &result {
                Ok(response) => tonic::Status::from_header_map(response.headers()),
                Err(e) => Some(tonic::Status::unknown(e.to_string())),
            };
            let code = status.as_ref().map_or(Code::Ok, tonic::Status::code);
            metrics.observe(&method, code, elapsed);
            let ms = elapsed.as_secs_f64() * 1000.0;
            let _entered = span.enter();
            match &status {
                None => tracing::info!(duration_ms = ms, code = "OK"),
                Some(s) if s.code() == Code::Ok => tracing::info!(duration_ms = ms, code = "OK"),
                Some(s) if matches!(s.code(), Code::Internal | Code::Unknown) => {
                    tracing::error!(duration_ms = ms, code = ?s.code(), error = s.message())
                }
                Some(s) => tracing::warn!(duration_ms = ms, code = ?s.code(), error = s.message()),
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_named_as_their_metrics_always_were() {
        assert_eq!(
            method_label("/csi.v1.Controller/CreateVolume"),
            "CreateVolume"
        );
        assert_eq!(
            method_label("/csi.v1.Node/NodeStageVolume"),
            "NodeStageVolume"
        );
        assert_eq!(
            method_label("/stowage.v1.Admin/CreateVolume"),
            "Admin.CreateVolume"
        );
        assert_eq!(method_label("/stowage.v1.Peer/Hello"), "Peer.Hello");
        assert_eq!(method_label("/odd"), "/odd");
    }
}
