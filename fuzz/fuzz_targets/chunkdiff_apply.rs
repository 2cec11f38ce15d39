//! A chunk-diff replication stream from a peer, applied to an empty tree.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let dest = dir.path().join("data");
    std::fs::create_dir(&dest).expect("dest");
    let _ = volume_core::chunkdiff::apply(data, &dest);
    // Nothing may appear beside the tree it was applied to.
    let beside: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(beside, vec![std::ffi::OsString::from("data")], "wrote outside its tree");
});
