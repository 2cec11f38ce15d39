//! A Docker/Podman volume-plugin request: the first byte picks the endpoint, the rest
//! is the JSON body, served by the real router over the service layer on the fake host.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const ENDPOINTS: &[&str] = &[
    "/Plugin.Activate",
    "/VolumeDriver.Create",
    "/VolumeDriver.Remove",
    "/VolumeDriver.Mount",
    "/VolumeDriver.Unmount",
    "/VolumeDriver.Path",
    "/VolumeDriver.Get",
    "/VolumeDriver.List",
    "/VolumeDriver.Capabilities",
];

fuzz_target!(|data: &[u8]| {
    let Some((pick, body)) = data.split_first() else {
        return;
    };
    let endpoint = ENDPOINTS[usize::from(*pick) % ENDPOINTS.len()];
    let router = stowage_daemon::plugin::router(stowage_fuzz::volumes(), stowage_fuzz::plugin_mounts());
    let request = axum::http::Request::post(endpoint)
        .body(axum::body::Body::from(body.to_vec()))
        .expect("request");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let response = runtime.block_on(router.oneshot(request)).expect("infallible");
    // Every answer is the protocol's: 200, or 500 with the error in "Err" — never a
    // panic (a worker that panicked would be a crash here) nor another status.
    let status = response.status().as_u16();
    assert!(status == 200 || status == 500, "status {status}");
    // The fake's call log would grow without bound over a long run.
    stowage_fuzz::reset();
});
