//! kairos-loadgen: a native load generator for KServe V2 gRPC servers that outruns them.
//!
//! One point per run (`--rate R` open loop or `--concurrency N` closed loop), one JSON object
//! out. Exit codes: 0 done, 1 the run failed (cannot connect, metadata refused, output not
//! writable), 2 bad arguments.

mod args;
mod codec;
mod engine;
mod h2conn;
mod request;
mod schedule;
mod stats;
mod timer;
mod usage;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Map, Value};
use tonic::transport::{Channel, Endpoint};

use args::Args;
use engine::Target;
use request::{pb, RequestOptions};
use stats::Window;

/// A failure and the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

fn bad_args(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        message: message.into(),
    }
}

fn failed(message: impl Into<String>) -> Failure {
    Failure {
        code: 1,
        message: message.into(),
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => err.exit(), // clap: 2 for errors, 0 for --help/--version
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            eprintln!("kairos-loadgen: {message}");
            ExitCode::from(code)
        }
    }
}

fn run(args: Args) -> Result<(), Failure> {
    args.validate().map_err(bad_args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers as usize)
        .enable_all()
        .build()
        .map_err(|e| failed(format!("cannot start the runtime: {e}")))?;
    let args = Arc::new(args);
    let task = runtime.spawn(measure(args.clone()));
    let result = runtime
        .block_on(task)
        .map_err(|e| failed(format!("the run panicked: {e}")))?;
    runtime.shutdown_background(); // requests never answered are dropped, not waited for
    let mut point = result?;
    point.insert(
        "generator_cpu_s_total".into(),
        json!(round(usage::self_cpu_seconds(), 4)),
    );
    let text = Value::Object(point).to_string();
    match &args.out {
        None => println!("{text}"),
        Some(path) => std::fs::write(path, text + "\n")
            .map_err(|e| failed(format!("cannot write {}: {e}", path.display())))?,
    }
    Ok(())
}

/// The mix as `kairos bench` spells it (ms:share,...), or None.
fn mix_text(args: &Args) -> Option<String> {
    args.deadline_mix.as_ref().map(|mix| {
        mix.0
            .iter()
            .map(|c| format!("{}:{}", c.deadline_ms, c.share))
            .collect::<Vec<_>>()
            .join(",")
    })
}

fn round(v: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (v * scale).round() / scale
}

/// Error text with its causes (tonic's transport errors say little on their own).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn connect(args: &Args, connections: u32) -> Result<Vec<Channel>, Failure> {
    let uri = args.endpoint_uri().map_err(bad_args)?;
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| bad_args(format!("--url {:?}: {e}", args.url)))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .buffer_size(1 << 16);
    let mut channels = Vec::with_capacity(connections as usize);
    for _ in 0..connections {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| failed(format!("cannot connect to {}: {}", args.url, chain(&e))))?;
        channels.push(channel);
    }
    Ok(channels)
}

async fn inputs(args: &Args) -> Result<Vec<args::InputSpec>, Failure> {
    if !args.inputs.is_empty() {
        return Ok(args.inputs.clone());
    }
    let channel = connect(args, 1).await?.remove(0);
    let mut client = pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel);
    let mut request = tonic::Request::new(pb::ModelMetadataRequest {
        name: args.model.clone(),
        version: args.model_version.clone(),
    });
    request.set_timeout(Duration::from_secs(30));
    let meta = client.model_metadata(request).await.map_err(|s| {
        let message: String = s.message().chars().take(200).collect();
        failed(format!(
            "ModelMetadata for {:?} failed: {:?}: {message}",
            args.model,
            s.code()
        ))
    })?;
    request::specs_from_metadata(meta.get_ref(), args.rows, args.input_shape.as_deref())
        .map_err(failed)
}

/// CPU and wall clock at the measured window's edges.
struct Edges {
    cpu: f64,
    server: Option<f64>,
    at: Instant,
}

fn edge(server_pid: Option<u32>) -> Edges {
    Edges {
        cpu: usage::self_cpu_seconds(),
        server: server_pid.and_then(usage::process_cpu_seconds),
        at: Instant::now(),
    }
}

/// Snapshots at t0 + start and t0 + end, taken off the hot path.
async fn probe(t0: Instant, start: Duration, end: Duration, pid: Option<u32>) -> (Edges, Edges) {
    tokio::time::sleep_until((t0 + start).into()).await;
    let first = edge(pid);
    tokio::time::sleep_until((t0 + end).into()).await;
    (first, edge(pid))
}

async fn measure(args: Arc<Args>) -> Result<Map<String, Value>, Failure> {
    let specs = inputs(&args).await?;
    let options = RequestOptions {
        model: &args.model,
        version: &args.model_version,
        params: &args.params,
        seed: args.seed,
    };
    let payload = request::encode(&request::build_request(&specs, &options));
    let payload_bytes = payload.len();
    let classes = args.classes();
    let deadlines: Vec<Option<Duration>> = classes.iter().map(|(d, _)| *d).collect();
    let target = Arc::new(match args.transport {
        args::Transport::Tonic => {
            Target::tonic(connect(&args, args.connections).await?, payload, &deadlines)
        }
        args::Transport::H2 => {
            let uri = args.endpoint_uri().map_err(bad_args)?;
            let authority = uri.trim_start_matches("http://");
            let timeouts = deadlines
                .iter()
                .map(|d| d.map(|d| (d, engine::grpc_timeout(d))))
                .collect();
            let conns = args.connections as usize;
            let h2 =
                h2conn::H2Target::connect(authority, engine::INFER_PATH, conns, &payload, timeouts)
                    .await
                    .map_err(failed)?;
            Target::h2(h2)
        }
    });
    let (warmup, duration) = (
        Duration::from_secs_f64(args.warmup),
        Duration::from_secs_f64(args.duration),
    );
    // the longest deadline, or --drain-s when some class has none
    let longest = deadlines
        .iter()
        .try_fold(Duration::ZERO, |m, d| d.map(|d| m.max(d)));
    let drain = longest.unwrap_or(Duration::from_secs_f64(args.drain_s)) + Duration::from_secs(2);
    let cv = args.cv.unwrap_or(1.0);
    let times = args.rate.map(|rate| {
        schedule::send_times(
            args.arrival,
            rate,
            args.warmup + args.duration,
            args.seed,
            cv,
        )
    });
    let mix = args.deadline_mix.clone().unwrap_or_default().0;
    let request_classes = match (&times, mix.is_empty()) {
        (Some(times), false) => schedule::classes(times.len(), &mix, args.seed),
        _ => Vec::new(),
    };
    let t0 = Instant::now() + Duration::from_millis(20);
    let prober = tokio::spawn(probe(t0, warmup, warmup + duration, args.server_pid));
    let records = match (&times, args.concurrency) {
        (Some(times), _) => {
            let spin = Duration::from_micros(u64::from(args.spin_us));
            engine::open_loop(target.clone(), times, &request_classes, t0, spin, drain).await
        }
        (None, Some(c)) => {
            tokio::time::sleep_until(t0.into()).await;
            let stop = (warmup + duration).as_nanos() as u64;
            engine::closed_loop(target.clone(), c as usize, t0, stop, drain).await
        }
        (None, None) => return Err(bad_args("one of --rate or --concurrency is required")),
    };
    let (first, last) = prober
        .await
        .map_err(|e| failed(format!("the probe failed: {e}")))?;
    let window = Window {
        start_ns: warmup.as_nanos() as u64,
        end_ns: (warmup + duration).as_nanos() as u64,
        slo_ms: args.slo_ms,
        rows: args.rows_in(&specs),
        open_loop: args.rate.is_some(),
        mix: mix.iter().map(|c| (c.deadline_ms, c.share)).collect(),
    };
    let mut summary = stats::summarize(&records, &window);
    let messages: Map<String, Value> = target
        .messages()
        .into_iter()
        .map(|(code, text)| (stats::status_name(code), json!(text)))
        .collect();
    summary.insert("error_messages".into(), Value::Object(messages));
    Ok(point(&args, summary, &first, &last, payload_bytes))
}

impl Args {
    /// Rows per request: the first input's leading dim.
    fn rows_in(&self, specs: &[args::InputSpec]) -> u32 {
        specs
            .first()
            .and_then(|s| s.dims.first())
            .and_then(|d| u32::try_from(*d).ok())
            .unwrap_or(self.rows)
    }
}

/// The JSON point: summary fields at the top, as client/bench/runner.py's points have them.
fn point(
    args: &Args,
    summary: Map<String, Value>,
    first: &Edges,
    last: &Edges,
    payload_bytes: usize,
) -> Map<String, Value> {
    let requests = summary.get("requests").and_then(Value::as_u64).unwrap_or(0) as f64;
    let mut out = Map::new();
    out.insert("engine".into(), json!("native"));
    match args.rate {
        Some(rate) => {
            out.insert("mode".into(), json!("open"));
            out.insert("offered_rate".into(), json!(rate));
            out.insert("arrival".into(), json!(args.arrival.name()));
            out.insert("cv".into(), json!(args.cv));
            out.insert("burst".into(), Value::Null);
            out.insert("deadline_mix".into(), json!(mix_text(args)));
            out.insert(
                "kept_up".into(),
                json!(stats::kept_up(&summary, rate, args.tightest_slo_ms())),
            );
        }
        None => {
            out.insert("mode".into(), json!("closed"));
            out.insert("concurrency".into(), json!(args.concurrency));
        }
    }
    out.extend(summary);
    let wall = last.at.duration_since(first.at).as_secs_f64().max(1e-9);
    let cpu = (last.cpu - first.cpu).max(0.0);
    out.insert(
        "generator".into(),
        json!({
            "cpu_s": round(cpu, 4),
            "cpu_util": round(cpu / wall, 4),
            "cpu_us_per_request": round(cpu / requests.max(1.0) * 1e6, 2),
            "capacity_rps": (cpu > 0.0).then(|| round(requests / cpu, 1)),
            "workers": args.workers,
            "connections": args.connections,
            "transport": args.transport.name(),
            "spin_us": args.spin_us,
        }),
    );
    if let (Some(a), Some(b)) = (first.server, last.server) {
        out.insert(
            "server_cpu".into(),
            json!({"cpu_util": round((b - a) / wall, 4), "cpu_us_per_request": round((b - a) / requests.max(1.0) * 1e6, 2)}),
        );
    }
    out.insert(
        "config".into(),
        json!({
            "url": args.url, "model": args.model, "model_version": args.model_version,
            "rate": args.rate, "concurrency": args.concurrency, "arrival": args.arrival.name(),
            "cv": args.cv, "deadline_mix": mix_text(args),
            "warmup_s": args.warmup, "duration_s": args.duration, "seed": args.seed,
            "slo_ms": args.slo_ms, "deadline_ms": args.deadline().map(|d| d.as_secs_f64() * 1e3),
            "rows": args.rows, "payload_bytes": payload_bytes, "server_pid": args.server_pid,
        }),
    );
    out
}
