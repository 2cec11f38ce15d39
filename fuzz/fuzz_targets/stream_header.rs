//! A replication stream's header from a peer (protobuf), checked and given to a
//! manager on the fake host to begin a receive, which is then dropped (cut off).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = stowage_proto::stowage::v1::SnapshotHeader::decode(data) else {
        return;
    };
    let Ok(header) = stowage_daemon::grpc::peer::incoming_header(header) else {
        return;
    };
    let manager = stowage_fuzz::manager();
    stowage_fuzz::reset();
    if let Ok(rx) = manager.begin_receive(header.clone()) {
        drop(rx);
        // A receive cut off leaves no directory for a volume this node does not hold.
        if volume_core::manager::is_valid_id(&header.volume_id) {
            assert!(
                !manager.replica_dir(&header.volume_id).exists(),
                "a cut-off receive left its directory"
            );
        }
    }
});
