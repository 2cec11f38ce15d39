//! The Docker/Podman volume plugin protocol: HTTP/1.1 on a private unix socket, every
//! endpoint a POST with a JSON body and a JSON answer. Volumes are known to the client
//! by name (the store's name index); Mount and Unmount are reference-counted by caller
//! id in volume-core (`plugin_mounts`), which stages the volume at
//! `<state>/plugin/<volume id>` without a ControllerPublish.
//!
//! Errors are HTTP 500 with `{"Err": "<the whole error chain>"}`, as Docker and Podman
//! expect. Volume-core work runs on the blocking pool; an operation that finds the
//! volume busy (another call on it in flight) is retried for a while, since these
//! clients do not retry on their own.

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
use volume_core::{CreateRequest, VolumeManager, VolumeParams, VolumeRecord};

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
    Core(#[from] volume_core::Error),
    /// The blocking task running the operation panicked or was cancelled.
    #[error("worker failed")]
    Worker(#[source] tokio::task::JoinError),
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
    manager: Arc<VolumeManager>,
    mounts: PathBuf,
}

type Op = fn(&Plugin, &PluginRequest) -> volume_core::Result<Value>;

/// The protocol's routes over `manager`, mounting volumes under `mounts`.
pub fn router(manager: Arc<VolumeManager>, mounts: PathBuf) -> Router {
    Router::new()
        .route("/Plugin.Activate", route("Plugin.Activate", activate))
        .route("/VolumeDriver.Create", route("VolumeDriver.Create", create))
        .route("/VolumeDriver.Remove", route("VolumeDriver.Remove", remove))
        .route("/VolumeDriver.Mount", route("VolumeDriver.Mount", mount))
        .route(
            "/VolumeDriver.Unmount",
            route("VolumeDriver.Unmount", unmount),
        )
        .route("/VolumeDriver.Path", route("VolumeDriver.Path", path))
        .route("/VolumeDriver.Get", route("VolumeDriver.Get", get))
        .route("/VolumeDriver.List", route("VolumeDriver.List", list))
        .route(
            "/VolumeDriver.Capabilities",
            route("VolumeDriver.Capabilities", capabilities),
        )
        .with_state(Arc::new(Plugin { manager, mounts }))
}

/// Serves the plugin protocol on `listener` (bind it with
/// [`bind_private`](crate::endpoint::bind_private)) until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::UnixListener,
    manager: Arc<VolumeManager>,
    mounts: PathBuf,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(socket = ?addr.as_pathname(), mounts = %mounts.display(), "serving the volume plugin protocol");
    }
    axum::serve(listener, router(manager, mounts))
        .with_graceful_shutdown(shutdown)
        .await
}

fn route(method: &'static str, op: Op) -> MethodRouter<Arc<Plugin>> {
    post(
        move |State(plugin): State<Arc<Plugin>>, body: Bytes| async move {
            handle(plugin, method, op, body).await
        },
    )
}

/// Parses the body, runs `op` on the blocking pool and logs one line.
async fn handle(plugin: Arc<Plugin>, method: &'static str, op: Op, body: Bytes) -> Response {
    let start = Instant::now();
    let parsed = parse(&body);
    let (name, caller) = parsed
        .as_ref()
        .map(|r| (r.name.clone(), r.id.clone()))
        .unwrap_or_default();
    let result = match parsed {
        Err(e) => Err(e),
        Ok(req) => {
            tokio::task::spawn_blocking(move || crate::rpc::retry_busy(|| op(&plugin, &req)))
                .await
                .map_err(PluginError::Worker)
                .and_then(|r| r.map_err(PluginError::from))
        }
    };
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(value) => {
            tracing::info!(rpc = method, volume.name = %name, caller = %caller, duration_ms = ms, outcome = "ok");
            answer(StatusCode::OK, &value)
        }
        Err(e) => {
            let message = crate::status::chain(&e);
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

fn required_name(req: &PluginRequest) -> volume_core::Result<&str> {
    if req.name.is_empty() {
        Err(volume_core::Error::InvalidArgument(
            "Name is required".into(),
        ))
    } else {
        Ok(&req.name)
    }
}

fn activate(_: &Plugin, _: &PluginRequest) -> volume_core::Result<Value> {
    Ok(json!({ "Implements": ["VolumeDriver"] }))
}

fn capabilities(_: &Plugin, _: &PluginRequest) -> volume_core::Result<Value> {
    Ok(json!({ "Capabilities": { "Scope": "local" } }))
}

/// The create request for `-o` options: `size` (binary units, default 1 GiB), `kind`
/// (dir | loop) and `fs` (a loop volume's fsType); anything else is refused.
fn create_request(
    name: &str,
    opts: Option<&HashMap<String, String>>,
) -> volume_core::Result<CreateRequest> {
    let mut params = HashMap::new();
    let mut size = 0;
    for (key, value) in opts.into_iter().flatten() {
        match key.as_str() {
            "size" => size = parse_volume_size(value)?,
            "kind" if value == "image" => {
                return Err(volume_core::Error::InvalidArgument(
                    "kind image is not offered through the volume plugin (its layers are \
                     given through CSI or vol create); use dir or loop"
                        .into(),
                ));
            }
            "kind" => {
                params.insert(volume_core::params::KIND.to_string(), value.clone());
            }
            "fs" => {
                params.insert(volume_core::params::FS_TYPE.to_string(), value.clone());
            }
            "layout" => {
                params.insert(volume_core::params::LAYOUT.to_string(), value.clone());
            }
            other => {
                return Err(volume_core::Error::InvalidArgument(format!(
                    "unknown option {other:?} (known: size, kind, fs, layout)"
                )));
            }
        }
    }
    let params = VolumeParams::parse(&params, None)?;
    Ok(CreateRequest::new(name, size, 0, params))
}

fn create(p: &Plugin, req: &PluginRequest) -> volume_core::Result<Value> {
    let create = create_request(required_name(req)?, req.opts.as_ref())?;
    p.manager.create(&create)?;
    Ok(json!({ "Err": "" }))
}

fn remove(p: &Plugin, req: &PluginRequest) -> volume_core::Result<Value> {
    match p.manager.get_by_name(required_name(req)?) {
        Ok(rec) => p.manager.delete(&rec.id)?,
        // Removing what is gone succeeds, as everywhere else in the driver.
        Err(volume_core::Error::VolumeNotFound(_)) => {}
        Err(e) => return Err(e),
    }
    Ok(json!({ "Err": "" }))
}

fn mount(p: &Plugin, req: &PluginRequest) -> volume_core::Result<Value> {
    let rec = p.manager.get_by_name(required_name(req)?)?;
    let path = p.manager.plugin_mount(&rec.id, &req.id, &p.mounts)?;
    Ok(json!({ "Mountpoint": path, "Err": "" }))
}

fn unmount(p: &Plugin, req: &PluginRequest) -> volume_core::Result<Value> {
    let rec = p.manager.get_by_name(required_name(req)?)?;
    p.manager.plugin_unmount(&rec.id, &req.id, &p.mounts)?;
    Ok(json!({ "Err": "" }))
}

fn mountpoint(p: &Plugin, rec: &VolumeRecord) -> String {
    p.manager
        .plugin_path(rec, &p.mounts)
        .map(|m| m.display().to_string())
        .unwrap_or_default()
}

fn path(p: &Plugin, req: &PluginRequest) -> volume_core::Result<Value> {
    let rec = p.manager.get_by_name(required_name(req)?)?;
    Ok(json!({ "Mountpoint": mountpoint(p, &rec), "Err": "" }))
}

fn get(p: &Plugin, req: &PluginRequest) -> volume_core::Result<Value> {
    let rec = p.manager.get_by_name(required_name(req)?)?;
    let mut status = json!({
        "id": rec.id,
        "kind": rec.kind.as_str(),
        "capacity": rec.capacity,
    });
    if let Some(fs) = rec.fs {
        status["fs"] = json!(fs.as_str());
    }
    Ok(json!({
        "Volume": {
            "Name": rec.name,
            "Mountpoint": mountpoint(p, &rec),
            "CreatedAt": rfc3339(rec.created_at),
            "Status": status,
        },
        "Err": "",
    }))
}

fn list(p: &Plugin, _: &PluginRequest) -> volume_core::Result<Value> {
    let volumes: Vec<Value> = p
        .manager
        .list(None, usize::MAX)?
        .into_iter()
        // Inline ephemeral volumes belong to their pod, not to a container engine.
        .filter(|rec| !rec.ephemeral)
        .map(|rec| json!({ "Name": rec.name, "Mountpoint": mountpoint(p, &rec) }))
        .collect();
    Ok(json!({ "Volumes": volumes, "Err": "" }))
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
    use volume_core::os::fake::FakeHost;
    use volume_core::store::Store;
    use volume_core::{NodeIdentity, Pool, PoolConfig};

    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        app: Router,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeHost::new(true);
        let pool_dir = dir.path().join("pool");
        std::fs::create_dir_all(&pool_dir).unwrap();
        let pool = Pool::open(&PoolConfig::Btrfs { path: pool_dir }, fake.host()).unwrap();
        let store = Store::open(&dir.path().join("meta.redb")).unwrap();
        let node = NodeIdentity {
            node_id: "n".into(),
            state_dir: dir.path().join("state"),
            ephemeral_dir: dir.path().join("ephemeral"),
            attach_dir: dir.path().join("attach"),
            layers_dir: dir.path().join("layers"),
            overlay_program: dir.path().join("stowage-overlay"),
        };
        let manager = Arc::new(VolumeManager::new(store, pool, fake.host(), node));
        let app = router(manager, mounts_dir(dir.path()));
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
        let req = create_request("v", Some(&opts)).unwrap();
        assert_eq!(req.required_bytes, 1 << 30);
        assert_eq!(req.params.fs, Some(volume_core::FsType::Xfs));
        let req = create_request("v", None).unwrap();
        assert_eq!(
            (req.required_bytes, req.params.kind),
            (0, volume_core::VolumeKind::Dir)
        );
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
