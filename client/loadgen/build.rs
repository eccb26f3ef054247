//! Compiles the protocol from the repository's `protos/` (the files the Python stubs and the
//! server's front end come from) with protox, so no system `protoc` is needed. Client only.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../protos");
    let service = protos.join("grpc_service.proto");
    println!("cargo:rerun-if-changed={}", service.display());
    println!(
        "cargo:rerun-if-changed={}",
        protos.join("model_config.proto").display()
    );
    let files = protox::compile([&service], [&protos])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        // Ordered maps: the same request always encodes to the same bytes.
        .btree_map(".")
        .compile_fds(files)?;
    Ok(())
}
