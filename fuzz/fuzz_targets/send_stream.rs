//! A btrfs send stream from a peer, through the checker that stands before `btrfs
//! receive`, fed in pieces of the sizes the first bytes say.
#![no_main]

use libfuzzer_sys::fuzz_target;
use volume_core::os::sendstream::{Expect, StreamCheck};

fuzz_target!(|data: &[u8]| {
    let Some((&piece, rest)) = data.split_first() else {
        return;
    };
    let incremental = piece & 1 == 1;
    let mut check = StreamCheck::new(Expect {
        subvolume: "data".into(),
        parent_uuids: if incremental { vec![[9; 16]] } else { Vec::new() },
        parent_root: None,
    });
    let mut passed = 0usize;
    let mut ok = true;
    for chunk in rest.chunks(usize::from(piece).max(1)) {
        match check.push(chunk) {
            Ok(out) => passed += out.len(),
            Err(_) => {
                ok = false;
                break;
            }
        }
    }
    // Only whole, checked commands are passed on: never more than came in.
    assert!(passed <= rest.len());
    if ok && check.finish().is_ok() {
        assert_eq!(passed, rest.len(), "a finished stream passed everything on");
    }
});
