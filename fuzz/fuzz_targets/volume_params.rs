//! StorageClass parameters and sizes from a CO: `key=value` lines.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut params = HashMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            params.insert(k.to_string(), v.to_string());
        }
        let _ = volume_core::size::parse_size(line);
        let _ = volume_core::size::parse_volume_size(line);
        let _ = volume_core::params::parse_interval(line);
        let _ = volume_core::params::parse_replicas(line);
        let _ = volume_core::manager::validate_name(line);
    }
    let fs = params.get("capFsType").cloned();
    let _ = volume_core::VolumeParams::parse(&params, fs.as_deref());
});
