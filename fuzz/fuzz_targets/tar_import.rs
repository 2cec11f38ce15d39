//! A layer blob (tar, gzip or zstd) from a user: imported into a store with small
//! limits, as an unprivileged importer (no device nodes on the fuzzing host). Any
//! outcome but a panic, a hang or a write outside the store is fine.
#![no_main]

use std::sync::OnceLock;

use layer_store::{ImportLimits, LayerStore, Privilege};
use libfuzzer_sys::fuzz_target;

fn store() -> &'static (tempfile::TempDir, LayerStore) {
    static STORE: OnceLock<(tempfile::TempDir, LayerStore)> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store =
            LayerStore::open_with(dir.path().join("store"), Privilege::Unprivileged).unwrap();
        store.set_limits(ImportLimits {
            max_bytes: 16 << 20,
            reserve_free: 0,
            sparse_ratio: 64,
        });
        (dir, store)
    })
}

fuzz_target!(|data: &[u8]| {
    let (_, store) = store();
    if let Ok(layer) = store.import_tar(data) {
        // Keep the store small: each run starts from an empty one.
        let _ = store.remove(&layer.key);
    }
});
