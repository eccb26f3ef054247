//! Kairos's native front end: a tonic gRPC server for the Open Inference Protocol,
//! with a small Python face (`kairos.server.frontend`). Rooms: `service` (the RPCs,
//! auth), `decode` (wire -> tensors), `validate` (against published signatures),
//! `admit` (deadlines, parameters), `handoff` (arrival queue, completions), `server`
//! (listener, TLS, health, reflection, drain), `python` (the PyO3 class).

pub mod admit;
pub mod codec;
pub mod decode;
pub mod errors;
pub mod handoff;
pub mod server;
pub mod service;
pub mod validate;

#[cfg(feature = "extension-module")]
mod python;

pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("inference");
}

/// The encoded descriptors of `protos/`, for server reflection.
pub const INFERENCE_DESCRIPTOR: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptor.bin"));
