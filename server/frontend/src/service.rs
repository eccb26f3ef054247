//! The tonic service: every RPC of `inference.GRPCInferenceService`. Inference is
//! decoded, validated and deadlined here and handed to Python in bulk; what needs no
//! Python (unknown model, malformed input, deadline passed, queue full, shutting down)
//! is refused here. Metadata, configuration, statistics and repository control are
//! rare: they are forwarded to Python whole, as encoded messages.

use crate::admit::{deadline, grpc_timeout, monotonic, read_parameters};
use crate::decode::decode_inputs;
use crate::errors::{code_name, short, Refusal};
use crate::handoff::{
    CallArrival, InferArrival, InferReply, Shared, StreamState, StreamTarget, UnaryTarget,
    VersionEntry, Waiter,
};
use crate::pb::grpc_inference_service_server::GrpcInferenceService;
use crate::pb::*;
use crate::validate::{validate_inputs, validate_outputs};
use prost::Message;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{metadata::MetadataMap, Request, Response, Status, Streaming};

/// Requests in flight per stream before reading pauses.
const STREAM_WINDOW: usize = 1024;
/// How long before its gRPC deadline a queued request is answered DEADLINE_EXCEEDED
/// natively, so that tonic's own timer (CANCELLED) never fires first.
const DEADLINE_GUARD_S: f64 = 0.0005;

#[derive(Debug, Clone)]
pub struct Config {
    pub default_slo_s: f64,
    pub max_rows_per_request: i64,
    /// Concurrent ModelStreamInfer calls (0 = no limit).
    pub max_streams: usize,
    /// Requests held for Python at once (0 = no limit); beyond it RESOURCE_EXHAUSTED.
    pub max_queued: usize,
    pub tokens: Vec<Vec<u8>>,
}

#[derive(Clone)]
pub struct Service {
    pub shared: Arc<Shared>,
    pub config: Arc<Config>,
}

fn deadline_passed() -> Refusal {
    Refusal::deadline("the deadline passed before the request was read".into())
}

fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !name.contains("..")
}

fn valid_version(version: &str) -> bool {
    !version.is_empty() && version.len() <= 18 && version.bytes().all(|b| b.is_ascii_digit())
}

impl Service {
    fn authorize(&self, metadata: &MetadataMap) -> Result<(), Status> {
        if self.config.tokens.is_empty() {
            return Ok(());
        }
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().as_bytes().to_vec())
            });
        let detail = match token {
            None => "missing bearer token",
            Some(offered) => {
                // Compare against every token in constant time so timing reveals nothing.
                let mut ok = subtle::Choice::from(0u8);
                for known in &self.config.tokens {
                    ok |= subtle::ConstantTimeEq::ct_eq(known.as_slice(), offered.as_slice());
                }
                if bool::from(ok) {
                    return Ok(());
                }
                "invalid bearer token"
            }
        };
        Err(Status::unauthenticated(format!(
            "{detail}: send 'authorization: Bearer <token>' metadata"
        )))
    }

    /// The ready version a request should use (mirrors `ModelRepository.resolve`).
    pub fn resolve(&self, name: &str, version: &str) -> Result<Arc<VersionEntry>, Refusal> {
        let models = self.shared.models.read();
        let Some(entry) = models.get(name) else {
            if !valid_name(name) {
                return Err(Refusal::invalid(format!(
                    "invalid model name '{}': use letters, digits, '_', '-' and '.', starting with a letter or digit",
                    short(name)
                )));
            }
            if !self.shared.started.load(Ordering::Acquire) {
                // Still loading the repository: the model may be on its way.
                return Err(Refusal::unavailable(format!(
                    "server is starting: model '{}' is not loaded yet",
                    short(name)
                )));
            }
            return Err(Refusal::not_found(format!(
                "unknown model '{}'",
                short(name)
            )));
        };
        if !version.is_empty() {
            if let Some(v) = entry.versions.get(version) {
                return Ok(v.clone());
            }
            if !valid_version(version) {
                return Err(Refusal::invalid(format!(
                    "invalid model version '{}': versions are whole numbers",
                    short(version)
                )));
            }
            if let Some(reason) = entry.failed.get(version) {
                return Err(Refusal::unavailable(format!(
                    "model '{name}' version {version} failed to load: {reason}"
                )));
            }
            return Err(Refusal::not_found(format!(
                "model '{name}' has no version {version}"
            )));
        }
        match entry.latest.as_ref().and_then(|v| entry.versions.get(v)) {
            Some(v) => Ok(v.clone()),
            None => Err(Refusal::unavailable(format!(
                "model '{name}' is not ready: {}",
                entry.reason
            ))),
        }
    }

    fn model_label(&self, name: &str) -> String {
        if self.shared.models.read().contains_key(name) {
            name.to_string()
        } else {
            String::new()
        }
    }

    /// Decode, validate and deadline one request; refusals are counted here.
    fn admit(
        &self,
        mut request: ModelInferRequest,
        arrival: f64,
        remaining: Option<f64>,
    ) -> Result<InferArrival, Refusal> {
        let batch = request
            .parameters
            .get(crate::admit::BATCH_CLASS_PARAMETER)
            .is_some_and(|p| {
                matches!(&p.parameter_choice, Some(infer_parameter::ParameterChoice::StringParam(s)) if s == "batch")
            });
        let result = self.admit_inner(&mut request, arrival, remaining);
        if let Err(refusal) = &result {
            // Labels as the Python side uses them: the served version when the name
            // resolves, and no user-supplied name for unknown models.
            let label = self.model_label(&request.model_name);
            let version = match self.resolve(&request.model_name, &request.model_version) {
                Ok(served) => served.version.clone(),
                Err(_) if label.is_empty() => String::new(),
                Err(_) => request.model_version.clone(),
            };
            self.shared
                .count_refusal(&label, &version, refusal.reason, batch);
        }
        result
    }

    fn admit_inner(
        &self,
        request: &mut ModelInferRequest,
        arrival: f64,
        remaining: Option<f64>,
    ) -> Result<InferArrival, Refusal> {
        let served = self.resolve(&request.model_name, &request.model_version)?;
        if let Some(timeout) = remaining {
            // Time left now: under load a request can reach its handler well after receipt.
            let left = timeout - (monotonic() - arrival);
            if left <= 0.0 {
                return Err(deadline_passed());
            }
            if left < served.min_service_s() {
                return Err(Refusal::refused(format!(
                    "cannot meet deadline: {:.3} ms left is less than one execution",
                    left * 1e3
                )));
            }
        }
        let signature = &served.signature;
        let mut inputs = decode_inputs(request)?;
        let rows = validate_inputs(signature, &mut inputs)?;
        let limit = self.config.max_rows_per_request;
        if limit > 0 && rows > limit {
            return Err(Refusal::limit(format!(
                "{rows} rows in one request; this server accepts at most {limit}"
            )));
        }
        let requested: Vec<String> = request.outputs.iter().map(|o| o.name.clone()).collect();
        let outputs = validate_outputs(signature, &requested)?;
        let parameters = read_parameters(&request.parameters)?;
        let deadline = deadline(
            arrival,
            remaining,
            parameters.timeout_us,
            served.slo_s,
            self.config.default_slo_s,
        );
        let clock = monotonic();
        if deadline <= clock {
            // e.g. a `timeout` parameter shorter than the time the request took to arrive
            return Err(deadline_passed());
        }
        if !parameters.batch_class {
            // The scheduler sees this request only once Python takes it: count that wait.
            let lag = self.shared.python_lag(clock);
            let now = clock + lag;
            if lag > 0.0 && now + served.min_service_s() > deadline {
                return Err(Refusal::refused(format!(
                    "cannot meet deadline: the scheduler is {:.3} ms behind, deadline in {:.3} ms",
                    lag * 1e3,
                    (deadline - clock) * 1e3
                )));
            }
            if let Some(delay) = served.queue_too_long(now, deadline) {
                return Err(Refusal::refused(format!(
                    "cannot meet deadline: predicted finish in {:.3} ms, deadline in {:.3} ms",
                    delay * 1e3,
                    (deadline - now) * 1e3
                )));
            }
        }
        let max = self.config.max_queued;
        if max > 0 && self.shared.in_flight() >= max {
            return Err(Refusal::refused(format!(
                "server queue full: {max} requests waiting (--max-pending-rpcs)"
            )));
        }
        Ok(InferArrival {
            rid: self.shared.next_rid(),
            model: std::mem::take(&mut request.model_name),
            requested_version: std::mem::take(&mut request.model_version),
            version: served.version.clone(),
            inputs,
            outputs,
            rows,
            batching: signature.max_batch_size > 0,
            arrival,
            deadline,
            priority: parameters.priority,
            batch_class: parameters.batch_class,
            min_accuracy: parameters.min_accuracy,
            request_id: std::mem::take(&mut request.id),
        })
    }

    /// Forward a rarely used RPC to Python as its encoded request.
    async fn forward<Req: Message, Resp: Message + Default>(
        &self,
        method: &'static str,
        request: Request<Req>,
    ) -> Result<Response<Resp>, Status> {
        self.authorize(request.metadata())?;
        let (tx, rx) = oneshot::channel();
        let call = CallArrival {
            rid: self.shared.next_rid(),
            method,
            payload: request.into_inner().encode_to_vec(),
        };
        self.shared.push_call(call, tx);
        let bytes = rx
            .await
            .map_err(|_| Status::unavailable("server is shutting down"))??;
        Resp::decode(bytes.as_slice())
            .map(Response::new)
            .map_err(|e| Status::internal(format!("cannot decode the {method} response: {e}")))
    }

    fn stream_error(
        refusal: &Refusal,
        model: String,
        version: String,
        id: String,
    ) -> ModelStreamInferResponse {
        ModelStreamInferResponse {
            error_message: format!("{}: {}", code_name(refusal.code), refusal.message),
            infer_response: Some(ModelInferResponse {
                model_name: model,
                model_version: version,
                id,
                ..Default::default()
            }),
        }
    }

    async fn read_stream(
        self,
        mut requests: Streaming<ModelInferRequest>,
        tx: mpsc::Sender<Result<ModelStreamInferResponse, Status>>,
        state: Arc<StreamState>,
    ) {
        loop {
            if self.shared.closing_streams.load(Ordering::Acquire) {
                break;
            }
            let next = tokio::select! {
                next = requests.next() => next,
                _ = self.shared.streams_closed.notified() => break,
            };
            let request = match next {
                None => break,
                Some(Err(status)) => {
                    let refusal = Refusal::invalid(status.message().to_string());
                    let error =
                        Self::stream_error(&refusal, String::new(), String::new(), String::new());
                    if tx.send(Ok(error)).await.is_err() {
                        break;
                    }
                    continue;
                }
                Some(Ok(request)) => request,
            };
            if let Some(message) = crate::codec::undecodable(&request) {
                let error = Self::stream_error(
                    &Refusal::invalid(message),
                    String::new(),
                    String::new(),
                    String::new(),
                );
                if tx.send(Ok(error)).await.is_err() {
                    break;
                }
                continue;
            }
            let arrival = monotonic();
            let (model, version, id) = (
                request.model_name.clone(),
                request.model_version.clone(),
                request.id.clone(),
            );
            // A stream's gRPC deadline covers the whole stream, not each request.
            let room = || {
                state.pending.load(Ordering::Acquire) + (tx.max_capacity() - tx.capacity())
                    < STREAM_WINDOW
            };
            state.wait_until(room).await;
            match self.admit(request, arrival, None) {
                Err(refusal) => {
                    if tx
                        .send(Ok(Self::stream_error(&refusal, model, version, id)))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(admitted) => {
                    state.pending.fetch_add(1, Ordering::AcqRel);
                    let target = StreamTarget {
                        tx: tx.clone(),
                        model,
                        version: admitted.version.clone(),
                        id,
                        state: state.clone(),
                    };
                    self.shared.push_infer(admitted, Waiter::Stream(target));
                }
            }
        }
        // Every request read is answered before the stream ends.
        state
            .wait_until(|| state.pending.load(Ordering::Acquire) == 0)
            .await;
        if self.shared.closing_streams.load(Ordering::Acquire) {
            let _ = tx
                .send(Err(Status::unavailable(
                    "server is shutting down: the stream was closed after answering every request it had read; resend the rest elsewhere",
                )))
                .await;
        }
        self.shared.open_streams.fetch_sub(1, Ordering::AcqRel);
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(
        &self,
        _request: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _request: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.shared.ready.load(Ordering::Acquire),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        self.authorize(request.metadata())?;
        let request = request.into_inner();
        let ready = match self.resolve(&request.name, &request.version) {
            Ok(_) => !self.shared.draining.load(Ordering::Acquire),
            Err(refusal) if refusal.code == tonic::Code::InvalidArgument => {
                return Err(refusal.status())
            }
            Err(_) => false,
        };
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        request: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        self.forward("ServerMetadata", request).await
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        self.forward("ModelMetadata", request).await
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let received = request
            .extensions()
            .get::<crate::server::Received>()
            .copied()
            .unwrap_or_else(|| crate::server::Received {
                at: tokio::time::Instant::now(),
                monotonic: monotonic(),
            });
        let arrival = received.monotonic;
        self.authorize(request.metadata())?;
        let remaining = grpc_timeout(
            request
                .metadata()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok()),
        );
        if let Some(message) = crate::codec::undecodable(request.get_ref()) {
            return Err(Status::invalid_argument(message));
        }
        let admitted = self
            .admit(request.into_inner(), arrival, remaining)
            .map_err(|r| r.status())?;
        let (tx, rx) = oneshot::channel::<InferReply>();
        let target = UnaryTarget {
            tx,
            model: admitted.model.clone(),
            version: admitted.version.clone(),
            id: admitted.request_id.clone(),
        };
        self.shared.push_infer(admitted, Waiter::Unary(target));
        let reply = match remaining {
            // tonic ends a call whose grpc-timeout expires with CANCELLED; answer
            // DEADLINE_EXCEEDED first. tonic polls the handler before its own timer, so
            // a guard due no later than that timer (same millisecond tick) wins.
            Some(left) => {
                let guard = std::time::Duration::from_secs_f64((left - DEADLINE_GUARD_S).max(0.0));
                match tokio::time::timeout_at(received.at + guard, rx).await {
                    Ok(reply) => reply,
                    Err(_) => {
                        return Err(Status::deadline_exceeded(
                            "the deadline passed while the request was queued",
                        ))
                    }
                }
            }
            None => rx.await,
        };
        match reply {
            Ok(Ok(response)) => Ok(Response::new(response)),
            Ok(Err(refusal)) => Err(refusal.status()),
            Err(_) => Err(Status::unavailable("server is shutting down")),
        }
    }

    type ModelStreamInferStream = ResponseStream;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        self.authorize(request.metadata())?;
        if self.shared.closing_streams.load(Ordering::Acquire) {
            return Err(Status::unavailable("server is shutting down"));
        }
        let limit = self.config.max_streams;
        let open = self.shared.open_streams.fetch_add(1, Ordering::AcqRel);
        if limit > 0 && open >= limit {
            self.shared.open_streams.fetch_sub(1, Ordering::AcqRel);
            return Err(Status::resource_exhausted(format!(
                "{open} streams open; this server allows at most {limit} concurrent ModelStreamInfer calls"
            )));
        }
        let (tx, rx) = mpsc::channel(2 * STREAM_WINDOW);
        let state = Arc::new(StreamState::default());
        tokio::spawn(self.clone().read_stream(request.into_inner(), tx, state));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        self.forward("ModelConfig", request).await
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        self.forward("ModelStatistics", request).await
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        self.forward("RepositoryIndex", request).await
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        self.forward("RepositoryModelLoad", request).await
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        self.forward("RepositoryModelUnload", request).await
    }
}

/// A batch's outputs for one request, encoded: tensor metadata and raw contents.
/// Encoded outputs, raw contents, and the model-group variant that served them.
pub type Outputs = (
    Vec<model_infer_response::InferOutputTensor>,
    Vec<Vec<u8>>,
    Option<String>,
);

/// The response parameter naming the model-group variant that served a request.
pub const VARIANT_PARAMETER: &str = "kairos_variant";

fn response(model: String, version: String, id: String, outputs: Outputs) -> ModelInferResponse {
    let mut parameters = std::collections::HashMap::new();
    if let Some(variant) = outputs.2 {
        parameters.insert(
            VARIANT_PARAMETER.to_string(),
            InferParameter {
                parameter_choice: Some(infer_parameter::ParameterChoice::StringParam(variant)),
            },
        );
    }
    ModelInferResponse {
        model_name: model,
        model_version: version,
        id,
        outputs: outputs.0,
        raw_output_contents: outputs.1,
        parameters,
    }
}

/// Deliver one inference result to whoever waits for it.
pub fn deliver(shared: &Shared, rid: u64, reply: Result<Outputs, Refusal>) {
    match shared.waiter(rid) {
        Some(Waiter::Unary(target)) => {
            let reply = reply.map(|o| response(target.model, target.version, target.id, o));
            let _ = target.tx.send(reply);
        }
        Some(Waiter::Stream(target)) => {
            let message = match reply {
                Ok(outputs) => ModelStreamInferResponse {
                    error_message: String::new(),
                    infer_response: Some(response(
                        target.model,
                        target.version,
                        target.id,
                        outputs,
                    )),
                },
                Err(refusal) => {
                    Service::stream_error(&refusal, target.model, target.version, target.id)
                }
            };
            // The reader keeps room for every answer in flight, so this never fails
            // unless the client has gone.
            let _ = target.tx.try_send(Ok(message));
            target.state.pending.fetch_sub(1, Ordering::AcqRel);
            target.state.answered.notify_waiters();
        }
        Some(Waiter::Call(tx)) => {
            let _ = tx.send(Err(Status::internal("an inference reply reached a call")));
        }
        None => {}
    }
}

/// Deliver one forwarded call's encoded response (or status).
pub fn deliver_call(shared: &Shared, rid: u64, reply: Result<Vec<u8>, Status>) {
    if let Some(Waiter::Call(tx)) = shared.waiter(rid) {
        let _ = tx.send(reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::ModelEntry;
    use crate::validate::Signature;

    fn service() -> Service {
        Service {
            shared: Arc::new(Shared::new().expect("an eventfd")),
            config: Arc::new(Config {
                default_slo_s: 1.0,
                max_rows_per_request: 0,
                max_streams: 0,
                max_queued: 0,
                tokens: Vec::new(),
            }),
        }
    }

    fn publish(service: &Service, name: &str, version: &str) {
        let signature = Signature {
            inputs: Vec::new(),
            outputs: Vec::new(),
            max_batch_size: 0,
        };
        let mut entry = ModelEntry {
            latest: Some(version.into()),
            ..Default::default()
        };
        let value = VersionEntry::new(version.into(), signature, None);
        entry.versions.insert(version.into(), Arc::new(value));
        service.shared.models.write().insert(name.into(), entry);
    }

    fn code(service: &Service, name: &str) -> tonic::Code {
        match service.resolve(name, "") {
            Ok(_) => tonic::Code::Ok,
            Err(refusal) => refusal.code,
        }
    }

    #[test]
    fn an_unknown_model_is_unavailable_until_start_up_ends_then_not_found() {
        let service = service();
        // Listening, models not yet published: the model may be on its way.
        assert_eq!(code(&service, "mlp"), tonic::Code::Unavailable);
        let refusal = service.resolve("mlp", "").err();
        assert!(refusal.is_some_and(|r| r.message.contains("server is starting")));
        publish(&service, "mlp", "1");
        assert_eq!(code(&service, "mlp"), tonic::Code::Ok);
        assert_eq!(code(&service, "other"), tonic::Code::Unavailable);
        // The start-up load is done: a name nobody published does not exist.
        service.shared.started.store(true, Ordering::Release);
        assert_eq!(code(&service, "other"), tonic::Code::NotFound);
        assert_eq!(code(&service, "mlp"), tonic::Code::Ok);
        // Draining (not ready again) keeps it NOT_FOUND: start-up is over.
        service.shared.ready.store(false, Ordering::Release);
        assert_eq!(code(&service, "other"), tonic::Code::NotFound);
    }

    #[test]
    fn an_invalid_name_is_invalid_even_during_start_up() {
        let service = service();
        assert_eq!(code(&service, "../etc"), tonic::Code::InvalidArgument);
    }
}
