//! The listener and the server around the service: TLS / mutual TLS, message-size
//! limits, health, reflection, and a graceful stop (GOAWAY, then wait for what was
//! received).

use crate::handoff::Shared;
use crate::pb::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::service::{Config, Service};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

pub const SERVICE_NAME: &str = "inference.GRPCInferenceService";

/// When a request's headers arrived: stamped as it enters the service stack, the same
/// instant tonic starts its grpc-timeout timer.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub at: tokio::time::Instant,
    /// The same instant on CLOCK_MONOTONIC (the scheduler's clock), in seconds.
    pub monotonic: f64,
}

fn stamp_receipt<B>(mut request: http::Request<B>) -> http::Request<B> {
    let received = Received {
        at: tokio::time::Instant::now(),
        monotonic: crate::admit::monotonic(),
    };
    request.extensions_mut().insert(received);
    request
}

/// tonic answers a message over the size limit with OUT_OF_RANGE; gRPC (and every
/// client's expectation) says RESOURCE_EXHAUSTED. The status travels in the headers
/// of a trailers-only response, so it is fixed there.
fn size_limit_status<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let too_large = headers.get("grpc-status").is_some_and(|v| v == "11")
        && headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| {
                m.contains("message%20length%20too%20large")
                    || m.contains("message length too large")
            });
    if too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

pub struct Tls {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Option<Vec<u8>>,
}

pub struct Options {
    pub host: String,
    pub port: u16,
    /// HTTP/2 streams (calls in flight) per connection.
    pub max_concurrent_streams: u32,
    pub max_message_bytes: usize,
    pub worker_threads: usize,
    pub tls: Option<Tls>,
    pub config: Config,
}

pub struct Running {
    pub runtime: Runtime,
    pub shared: Arc<Shared>,
    pub port: u16,
    pub health: HealthReporter,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address for host"))
}

pub fn start(options: Options) -> Result<Running, Box<dyn std::error::Error + Send + Sync>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.worker_threads.max(1))
        .thread_name("kairos-frontend")
        .enable_all()
        .build()?;
    let address = resolve(&options.host, options.port)?;
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let shared = Arc::new(Shared::new()?);
    let service = Service {
        shared: shared.clone(),
        config: Arc::new(options.config),
    };
    let limit = options.max_message_bytes;
    let inference = GrpcInferenceServiceServer::new(service)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let (health, health_service) = tonic_health::server::health_reporter();
    // tonic's reporter starts with "" SERVING: NOT_SERVING before the listener serves,
    // so no probe sees a server that has not loaded its models as healthy.
    set_health(&runtime, &health, false);
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::INFERENCE_DESCRIPTOR)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::INFERENCE_DESCRIPTOR)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let mut builder = Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(options.max_concurrent_streams)
        // Clients cancel calls whose deadline passes (RST_STREAM); under overload that is
        // most of them. hyper's rapid-reset guard (20 pending resets) would then close
        // the whole connection (clients see "broken pipe"); bound it by the stream limit.
        .http2_max_pending_accept_reset_streams(Some(options.max_concurrent_streams as usize))
        .http2_max_local_error_reset_streams(Some(4 * options.max_concurrent_streams as usize))
        .layer(tower::util::MapRequestLayer::new(stamp_receipt))
        .layer(tower::util::MapResponseLayer::new(size_limit_status));
    if let Some(tls) = options.tls {
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(tls.cert, tls.key));
        if let Some(ca) = tls.client_ca {
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        builder = builder.tls_config(config)?;
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let task = {
        let _guard = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let router = builder
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(inference);
        runtime.spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        }))
    };
    Ok(Running {
        runtime,
        shared,
        port,
        health,
        stop: Some(stop),
        task: Some(task),
    })
}

/// Health for the whole server ("") and the inference service.
fn set_health(runtime: &Runtime, health: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    let health = health.clone();
    runtime.block_on(async move {
        health.set_service_status("", status).await;
        health.set_service_status(SERVICE_NAME, status).await;
    });
}

impl Running {
    /// Health for the whole server ("") and the inference service.
    pub fn set_health(&self, serving: bool) {
        set_health(&self.runtime, &self.health, serving);
    }

    /// Graceful stop: GOAWAY to every connection, wait for the requests they carry
    /// (up to `grace`), then close.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(grace, task).await });
        }
    }
}
