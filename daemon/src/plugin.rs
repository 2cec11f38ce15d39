//! The Docker/Podman volume plugin protocol: HTTP/1.1 on a private unix socket, every
//! endpoint a POST with a JSON body and a JSON answer. Volumes are known to the client
//! by name (the store's name index); Mount and Unmount are reference-counted by caller
//! id in volume-core (`plugin_mounts`), which stages the volume at
//! `<state>/plugin/<volume id>` without a ControllerPublish.
//!
//! Errors are HTTP 500 with `{"Err": "<the whole error chain>"}`, as Docker and Podman
//! expect. Every endpoint is a translation onto the service layer as a
//! [`Caller::Person`]: an operation that finds the volume busy (another call on it in
//! flight) is retried for a while, since these clients do not retry on their own.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use serde::Deserialize;
use serde_json::{Value, json};
use volume_core::size::parse_volume_size;

use crate::service::container_mounts::EngineVolume;
use crate::service::{Caller, NewVolume, Volumes};

/// Content type of every answer (plugin API v1.2).
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";
/// Directory under the state root where plugin mounts live.
pub const MOUNTS_DIR: &str = "plugin";
/// Where plugin mounts live for the daemon whose state root is `state_root`.
pub fn mounts_dir(state_root: &Path) -> PathBuf {
    state_root.join(MOUNTS_DIR)
}

/// Why a plugin request failed; its chain is the `Err` the client sees.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The body is not the JSON object the endpoint expects.
    #[error("malformed request body")]
    Request(#[source] serde_json::Error),
    /// The volume operation failed.
    #[error(transparent)]
    Service(#[from] crate::service::Error),
}

impl From<volume_core::Error> for PluginError {
    fn from(e: volume_core::Error) -> Self {
        PluginError::Service(e.into())
    }
}

/// The union of the protocol's request bodies (`Name`, `ID`, `Opts`); every field may
/// be absent, and Activate and List come with no body at all.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
struct PluginRequest {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Opts")]
    opts: Option<HashMap<String, String>>,
}

#[derive(Debug)]
struct Plugin {
    volumes: Volumes,
    mounts: PathBuf,
}

/// The protocol's endpoints.
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Activate,
    Capabilities,
    Create,
    Remove,
    Mount,
    Unmount,
    Path,
    Get,
    List,
}

const ENDPOINTS: [(&str, Endpoint); 9] = [
    ("Plugin.Activate", Endpoint::Activate),
    ("VolumeDriver.Capabilities", Endpoint::Capabilities),
    ("VolumeDriver.Create", Endpoint::Create),
    ("VolumeDriver.Remove", Endpoint::Remove),
    ("VolumeDriver.Mount", Endpoint::Mount),
    ("VolumeDriver.Unmount", Endpoint::Unmount),
    ("VolumeDriver.Path", Endpoint::Path),
    ("VolumeDriver.Get", Endpoint::Get),
    ("VolumeDriver.List", Endpoint::List),
];

/// The protocol's routes over `volumes`, mounting volumes under `mounts`.
pub fn router(volumes: Volumes, mounts: PathBuf) -> Router {
    ENDPOINTS
        .iter()
        .fold(Router::new(), |r, &(method, endpoint)| {
            r.route(&format!("/{method}"), route(method, endpoint))
        })
        .with_state(Arc::new(Plugin { volumes, mounts }))
}

/// Serves the plugin protocol on `listener` (bind it with
/// [`bind_private`](crate::endpoint::bind_private)) until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::UnixListener,
    volumes: Volumes,
    mounts: PathBuf,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(socket = ?addr.as_pathname(), mounts = %mounts.display(), "serving the volume plugin protocol");
    }
    axum::serve(listener, router(volumes, mounts))
        .with_graceful_shutdown(shutdown)
        .await
}

fn route(method: &'static str, endpoint: Endpoint) -> MethodRouter<Arc<Plugin>> {
    post(
        move |State(plugin): State<Arc<Plugin>>, body: Bytes| async move {
            handle(plugin, method, endpoint, body).await
        },
    )
}

/// Parses the body, runs the endpoint and logs one line.
async fn handle(
    plugin: Arc<Plugin>,
    method: &'static str,
    endpoint: Endpoint,
    body: Bytes,
) -> Response {
    let start = Instant::now();
    let parsed = parse(&body);
    let (name, caller) = parsed
        .as_ref()
        .map(|r| (r.name.clone(), r.id.clone()))
        .unwrap_or_default();
    let result = match parsed {
        Err(e) => Err(e),
        Ok(req) => plugin.answer(endpoint, req).await,
    };
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(value) => {
            tracing::info!(rpc = method, volume.name = %name, caller = %caller, duration_ms = ms, outcome = "ok");
            answer(StatusCode::OK, &value)
        }
        Err(e) => {
            let message = crate::grpc::status::chain(&e);
            tracing::warn!(rpc = method, volume.name = %name, caller = %caller, duration_ms = ms, outcome = "error", error = %message);
            answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({ "Err": message }),
            )
        }
    }
}

fn parse(body: &[u8]) -> Result<PluginRequest, PluginError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(PluginRequest::default());
    }
    serde_json::from_slice(body).map_err(PluginError::Request)
}

fn answer(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

fn required_name(req: &PluginRequest) -> Result<String, PluginError> {
    if req.name.is_empty() {
        Err(volume_core::Error::InvalidArgument("Name is required".into()).into())
    } else {
        Ok(req.name.clone())
    }
}

impl Plugin {
    /// Answers one request.
    async fn answer(&self, endpoint: Endpoint, req: PluginRequest) -> Result<Value, PluginError> {
        let ok = || json!({ "Err": "" });
        match endpoint {
            Endpoint::Activate => Ok(json!({ "Implements": ["VolumeDriver"] })),
            Endpoint::Capabilities => Ok(json!({ "Capabilities": { "Scope": "local" } })),
            Endpoint::Create => {
                let new = new_volume(required_name(&req)?, req.opts.as_ref())?;
                self.volumes.create(Caller::Person, new).await?;
                Ok(ok())
            }
            Endpoint::Remove => {
                match self
                    .volumes
                    .delete(Caller::Person, &required_name(&req)?)
                    .await
                {
                    // Removing what is gone succeeds, as everywhere else in the driver.
                    Ok(())
                    | Err(crate::service::Error::Core(volume_core::Error::VolumeNotFound(_))) => {
                        Ok(ok())
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Endpoint::Mount => {
                let path = self
                    .volumes
                    .engine_mount(&required_name(&req)?, &req.id, self.mounts.clone())
                    .await?;
                Ok(json!({ "Mountpoint": path, "Err": "" }))
            }
            Endpoint::Unmount => {
                self.volumes
                    .engine_unmount(&required_name(&req)?, &req.id, self.mounts.clone())
                    .await?;
                Ok(ok())
            }
            Endpoint::Path => {
                let v = self
                    .volumes
                    .engine_volume(&required_name(&req)?, self.mounts.clone())
                    .await?;
                Ok(json!({ "Mountpoint": mountpoint(&v), "Err": "" }))
            }
            Endpoint::Get => {
                let v = self
                    .volumes
                    .engine_volume(&required_name(&req)?, self.mounts.clone())
                    .await?;
                Ok(volume_json(&v))
            }
            Endpoint::List => {
                let volumes: Vec<Value> = self
                    .volumes
                    .engine_volumes(self.mounts.clone())
                    .await?
                    .iter()
                    .map(|v| json!({ "Name": v.volume.name, "Mountpoint": mountpoint(v) }))
                    .collect();
                Ok(json!({ "Volumes": volumes, "Err": "" }))
            }
        }
    }
}

/// The create request for `-o` options: `size` (binary units, default 1 GiB), `kind`
/// (dir | loop), `fs` (a loop volume's fsType) and `layout`; anything else is refused.
fn new_volume(
    name: String,
    opts: Option<&HashMap<String, String>>,
) -> Result<NewVolume, PluginError> {
    let mut parameters = HashMap::new();
    let mut size = 0;
    for (key, value) in opts.into_iter().flatten() {
        let param = match key.as_str() {
            "size" => {
                size = parse_volume_size(value)?;
                continue;
            }
            "kind" if value == "image" => {
                return Err(volume_core::Error::InvalidArgument(
                    "kind image is not offered through the volume plugin (its layers are \
                     given through CSI or vol create); use dir or loop"
                        .into(),
                )
                .into());
            }
            "kind" => volume_core::params::KIND,
            "fs" => volume_core::params::FS_TYPE,
            "layout" => volume_core::params::LAYOUT,
            other => {
                return Err(volume_core::Error::InvalidArgument(format!(
                    "unknown option {other:?} (known: size, kind, fs, layout)"
                ))
                .into());
            }
        };
        parameters.insert(param.to_string(), value.clone());
    }
    Ok(NewVolume {
        name,
        required_bytes: size,
        parameters,
        ..NewVolume::default()
    })
}

/// Where the engine finds the volume ("" when it is not mounted).
fn mountpoint(v: &EngineVolume) -> String {
    v.mountpoint
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn volume_json(v: &EngineVolume) -> Value {
    let rec = &v.volume;
    let mut status = json!({
        "id": rec.id,
        "kind": rec.kind.as_str(),
        "capacity": rec.capacity,
    });
    if let Some(fs) = rec.fs {
        status["fs"] = json!(fs.as_str());
    }
    json!({
        "Volume": {
            "Name": rec.name,
            "Mountpoint": mountpoint(v),
            "CreatedAt": rfc3339(rec.created_at),
            "Status": status,
        },
        "Err": "",
    })
}

/// Seconds since the epoch as an RFC 3339 UTC timestamp.
fn rfc3339(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        app: Router,
    }

    fn fixture() -> Fixture {
        let (dir, volumes) = crate::service::tests::volumes();
        let app = router(volumes, mounts_dir(dir.path()));
        Fixture { dir, app }
    }

    async fn call(f: &Fixture, endpoint: &str, body: Value) -> (StatusCode, Value) {
        let body = if body.is_null() {
            Body::empty()
        } else {
            Body::from(body.to_string())
        };
        let req = Request::post(endpoint)
            .header(
                header::CONTENT_TYPE,
                "application/vnd.docker.plugins.v1.1+json",
            )
            .body(body)
            .unwrap();
        let resp = f.app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn a_volume_through_the_protocol() {
        let f = fixture();
        let (s, v) = call(&f, "/Plugin.Activate", Value::Null).await;
        assert_eq!(
            (s, v),
            (StatusCode::OK, json!({"Implements": ["VolumeDriver"]}))
        );
        let (_, v) = call(&f, "/VolumeDriver.Capabilities", Value::Null).await;
        assert_eq!(v, json!({"Capabilities": {"Scope": "local"}}));

        // Podman asks Get first; a missing volume is an error, so it creates.
        let (s, v) = call(&f, "/VolumeDriver.Get", json!({"Name": "web"})).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(v, json!({"Err": "volume web not found"}));
        let create = json!({"Name": "web", "Opts": {"size": "64MiB", "kind": "loop"}});
        let (s, v) = call(&f, "/VolumeDriver.Create", create.clone()).await;
        assert_eq!((s, v), (StatusCode::OK, json!({"Err": ""})));
        let (s, _) = call(&f, "/VolumeDriver.Create", create).await;
        assert_eq!(s, StatusCode::OK, "create is idempotent");

        let (s, v) = call(&f, "/VolumeDriver.Get", json!({"Name": "web"})).await;
        assert_eq!(s, StatusCode::OK);
        let vol = &v["Volume"];
        assert_eq!(vol["Name"], "web");
        assert_eq!(vol["Mountpoint"], "");
        assert!(vol["CreatedAt"].as_str().unwrap().ends_with('Z'), "{v}");
        assert_eq!(vol["Status"]["kind"], "loop");
        assert_eq!(vol["Status"]["fs"], "ext4");
        assert_eq!(vol["Status"]["capacity"], 64 << 20);
        let id = vol["Status"]["id"].as_str().unwrap().to_string();

        let mnt = json!({"Name": "web", "ID": "ctr-1"});
        let (s, v) = call(&f, "/VolumeDriver.Mount", mnt.clone()).await;
        let expected = f.dir.path().join("plugin").join(&id);
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v, json!({"Mountpoint": expected, "Err": ""}));
        let (_, v) = call(&f, "/VolumeDriver.Path", json!({"Name": "web"})).await;
        assert_eq!(v["Mountpoint"], json!(expected));
        let (_, v) = call(&f, "/VolumeDriver.List", Value::Null).await;
        assert_eq!(
            v,
            json!({"Volumes": [{"Name": "web", "Mountpoint": expected}], "Err": ""})
        );

        // Still mounted: removal is refused with the reason.
        let (s, v) = call(&f, "/VolumeDriver.Remove", json!({"Name": "web"})).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(v["Err"].as_str().unwrap().contains("still staged"), "{v}");

        let (s, v) = call(&f, "/VolumeDriver.Unmount", mnt).await;
        assert_eq!((s, v), (StatusCode::OK, json!({"Err": ""})));
        let (_, v) = call(&f, "/VolumeDriver.Path", json!({"Name": "web"})).await;
        assert_eq!(v["Mountpoint"], "");
        let (s, _) = call(&f, "/VolumeDriver.Remove", json!({"Name": "web"})).await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = call(&f, "/VolumeDriver.Remove", json!({"Name": "web"})).await;
        assert_eq!(s, StatusCode::OK, "removing a removed volume succeeds");
        let (_, v) = call(&f, "/VolumeDriver.List", json!({})).await;
        assert_eq!(v, json!({"Volumes": [], "Err": ""}));
    }

    #[tokio::test]
    async fn bad_requests_answer_err() {
        let f = fixture();
        let (s, v) = call(
            &f,
            "/VolumeDriver.Create",
            json!({"Name": "x", "Opts": {"colour": "red"}}),
        )
        .await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            v["Err"]
                .as_str()
                .unwrap()
                .contains("unknown option \"colour\""),
            "{v}"
        );
        let (_, v) = call(
            &f,
            "/VolumeDriver.Create",
            json!({"Name": "x", "Opts": {"size": "lots"}}),
        )
        .await;
        assert!(v["Err"].as_str().unwrap().contains("size"), "{v}");
        for (size, why) in [("10", "give a unit"), ("0", "give a unit")] {
            let (_, v) = call(
                &f,
                "/VolumeDriver.Create",
                json!({"Name": "x", "Opts": {"size": size}}),
            )
            .await;
            assert!(v["Err"].as_str().unwrap().contains(why), "{size}: {v}");
        }
        let (_, v) = call(
            &f,
            "/VolumeDriver.Create",
            json!({"Name": "x", "Opts": {"kind": "image"}}),
        )
        .await;
        assert!(
            v["Err"]
                .as_str()
                .unwrap()
                .contains("not offered through the volume plugin"),
            "{v}"
        );
        let (_, v) = call(
            &f,
            "/VolumeDriver.Create",
            json!({"Name": "x", "Opts": {"fs": "xfs"}}),
        )
        .await;
        assert!(v["Err"].as_str().unwrap().contains("kind=loop"), "{v}");
        let (s, v) = call(&f, "/VolumeDriver.Mount", json!({"ID": "c"})).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            v["Err"].as_str().unwrap().contains("Name is required"),
            "{v}"
        );
        let (s, v) = call(&f, "/VolumeDriver.Mount", json!([1, 2])).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            v["Err"]
                .as_str()
                .unwrap()
                .starts_with("malformed request body: "),
            "{v}"
        );
    }

    #[test]
    fn create_options_map_to_parameters() {
        let opts = HashMap::from([
            ("kind".to_string(), "loop".to_string()),
            ("fs".to_string(), "xfs".to_string()),
            ("size".to_string(), "1GiB".to_string()),
        ]);
        let new = new_volume("v".into(), Some(&opts)).unwrap();
        assert_eq!(new.required_bytes, 1 << 30);
        assert_eq!(
            new.parameters,
            HashMap::from([
                (volume_core::params::KIND.to_string(), "loop".to_string()),
                (volume_core::params::FS_TYPE.to_string(), "xfs".to_string()),
            ])
        );
        let new = new_volume("v".into(), None).unwrap();
        assert_eq!((new.required_bytes, new.parameters.len()), (0, 0));
        let odd = HashMap::from([("colour".to_string(), "blue".to_string())]);
        assert!(new_volume("v".into(), Some(&odd)).is_err());
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
