//! Compiles the protocol from the repository's `protos/` (the same files the Python
//! stubs come from) with protox, so no system `protoc` is needed.
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
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("inference_descriptor.bin"),
        prost::Message::encode_to_vec(&files),
    )?;
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::codec::StrictCodec")
        .compile_fds(files)?;
    Ok(())
}
