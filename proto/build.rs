//! Compiles `csi.proto` and `stowage.proto` with protox (a pure-Rust protobuf
//! compiler, so no system `protoc` is needed) and generates prost messages and
//! tonic clients and servers from the result. Everything is written to `OUT_DIR`.

use std::{env, error::Error, fs, path::PathBuf};

/// Our own files; the `google/protobuf` imports are built into protox.
const PROTOS: [&str; 2] = ["csi.proto", "stowage.proto"];

/// Name of the encoded descriptor set in `OUT_DIR`, included by `src/lib.rs`.
const DESCRIPTOR_SET: &str = "csi_descriptor.bin";

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("no CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("no OUT_DIR")?);

    let paths: Vec<PathBuf> = PROTOS.iter().map(|p| manifest_dir.join(p)).collect();
    for path in &paths {
        println!("cargo:rerun-if-changed={}", path.display());
    }

    let mut compiler = protox::Compiler::new([&manifest_dir])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(&paths)?;

    // The encoded set keeps custom options (csi_secret, alpha_*) and the
    // imported google/protobuf files, so a reflection service can serve it whole.
    fs::write(
        out_dir.join(DESCRIPTOR_SET),
        compiler.encode_file_descriptor_set(),
    )?;

    // prost-build needs the imported files in the set to resolve the types
    // they define; it maps `google.protobuf.*` to prost-types and emits no
    // module for them.
    let fds = compiler.file_descriptor_set();

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(&out_dir)
        .compile_fds(fds)?;

    Ok(())
}
