//! The command line: clap for the shape, small parsers for the typed values.
//!
//! Every input-driven failure is a one-line message; `main` prints it and exits 2.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Parser, ValueEnum};

use crate::request::{element_size, DATATYPES};

/// Open-loop arrival process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Arrival {
    /// Exponential gaps (a Poisson process) at the mean rate.
    Poisson,
    /// Evenly spaced sends, 1/rate apart.
    Constant,
    /// Gamma-distributed gaps of mean 1/rate and coefficient of variation --cv (bursty: cv > 1).
    Gamma,
}

impl Arrival {
    pub fn name(self) -> &'static str {
        match self {
            Arrival::Poisson => "poisson",
            Arrival::Constant => "constant",
            Arrival::Gamma => "gamma",
        }
    }
}

/// How calls travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// tonic's channel (tower buffer + hyper) with a pass-through codec; reconnects.
    Tonic,
    /// Bare h2 streams: the whole frame pre-built, HEADERS and DATA written together.
    H2,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tonic => "tonic",
            Transport::H2 => "h2",
        }
    }
}

/// One input tensor: name, datatype and full shape (batch dim included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputSpec {
    pub name: String,
    pub datatype: String,
    pub dims: Vec<i64>,
}

/// One deadline class of a mix: its deadline (ms) and its share of requests (normalized).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeadlineClass {
    pub deadline_ms: f64,
    pub share: f64,
}

/// The classes of a `--deadline-mix`, in the order given.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeadlineMix(pub Vec<DeadlineClass>);

/// A request parameter value (the `InferParameter` oneof).
#[derive(Clone, Debug, PartialEq)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(String),
}

/// Native open/closed-loop load for KServe V2 (Open Inference Protocol) gRPC servers.
///
/// One point per run: `--rate R` (open loop: the schedule is drawn up front and each request
/// is sent at its time whatever the answers do) or `--concurrency N` (closed loop). Prints one
/// JSON object (fields as `kairos bench` reports them).
#[derive(Parser, Debug)]
#[command(name = "kairos-loadgen", version, about, long_about = None)]
#[command(group(ArgGroup::new("load").required(true).args(["rate", "concurrency"])))]
pub struct Args {
    /// host:port of the gRPC server (grpc:// or http:// prefixes accepted; no TLS)
    #[arg(long, default_value = "127.0.0.1:8001")]
    pub url: String,
    /// Model name
    #[arg(long, short = 'm')]
    pub model: String,
    /// Model version (default: the server's choice)
    #[arg(long, default_value = "")]
    pub model_version: String,
    /// Input tensor NAME:DATATYPE:DIMS, e.g. input:FP32:1x256 (repeatable; floats are random
    /// normal values from --seed, other types zeros, BYTES elements "0")
    #[arg(long = "input", value_parser = parse_input, value_name = "NAME:DATATYPE:DIMS")]
    pub inputs: Vec<InputSpec>,
    /// Build inputs from the server's ModelMetadata for --rows rows (the default without --input)
    #[arg(long, conflicts_with = "inputs")]
    pub from_metadata: bool,
    /// Rows per request (the batch dim), with --from-metadata
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub rows: u32,
    /// Non-batch dims where metadata leaves them open (-1), e.g. 256 or 3x224x224
    #[arg(long, value_parser = parse_dims, value_name = "DIMS")]
    pub input_shape: Option<Vec<i64>>,
    /// Request parameter KEY=VALUE (bool true/false, int, float, else string); repeatable
    #[arg(long = "param", value_parser = parse_param, value_name = "KEY=VALUE")]
    pub params: Vec<(String, ParamValue)>,
    /// Open loop: offered requests per second
    #[arg(long, short = 'r', value_parser = positive)]
    pub rate: Option<f64>,
    /// Open loop: arrival process
    #[arg(long, value_enum, default_value_t = Arrival::Poisson)]
    pub arrival: Arrival,
    /// --arrival gamma: coefficient of variation of the gaps (1 is Poisson; e.g. 4)
    #[arg(long, value_parser = positive)]
    pub cv: Option<f64>,
    /// Open loop: deadline classes DEADLINE_MS:SHARE,... (e.g. 5:0.5,50:0.5): each request gets
    /// one, drawn from --seed, as its gRPC deadline and its SLO; results per class too
    #[arg(long, value_parser = parse_mix, value_name = "MS:SHARE,...")]
    pub deadline_mix: Option<DeadlineMix>,
    /// Closed loop: requests always in flight
    #[arg(long, short = 'c', value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: Option<u32>,
    /// Seconds of load before the measured window
    #[arg(long, default_value_t = 2.0, value_parser = non_negative)]
    pub warmup: f64,
    /// Seconds measured
    #[arg(long, default_value_t = 10.0, value_parser = positive)]
    pub duration: f64,
    /// Seed of the arrivals and the input values
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Latency objective for goodput, ms
    #[arg(long, default_value_t = 10.0, value_parser = positive)]
    pub slo_ms: f64,
    /// gRPC deadline per request, ms (default: --slo-ms; 0: none)
    #[arg(long, value_parser = non_negative)]
    pub deadline_ms: Option<f64>,
    /// HTTP/2 connections, used round-robin
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub connections: u32,
    /// How calls travel: h2 (bare HTTP/2 streams, least CPU) or tonic (its channel; reconnects)
    #[arg(long, value_enum, default_value_t = Transport::H2)]
    pub transport: Transport,
    /// tokio worker threads (1: pin the generator to one core with taskset)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub workers: u32,
    /// Open loop: spin (instead of sleeping on a timer) this close to a send, µs
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub spin_us: u32,
    /// Longest wait for answers after the window when no deadline is sent, seconds
    #[arg(long, default_value_t = 10.0, value_parser = non_negative)]
    pub drain_s: f64,
    /// A local server's pid: report its CPU per request over the window
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the JSON here instead of stdout
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

impl Args {
    /// The gRPC deadline each request carries (None: no deadline).
    pub fn deadline(&self) -> Option<Duration> {
        let ms = self.deadline_ms.unwrap_or(self.slo_ms);
        (ms > 0.0).then(|| Duration::from_secs_f64(ms / 1e3))
    }

    /// Each deadline class's (deadline, SLO ms): the mix's, or the one of --deadline-ms/--slo-ms.
    pub fn classes(&self) -> Vec<(Option<Duration>, f64)> {
        match &self.deadline_mix {
            Some(mix) => mix
                .0
                .iter()
                .map(|c| {
                    (
                        Some(Duration::from_secs_f64(c.deadline_ms / 1e3)),
                        c.deadline_ms,
                    )
                })
                .collect(),
            None => vec![(self.deadline(), self.slo_ms)],
        }
    }

    /// The tightest SLO of the run, ms (what the generator's own lateness is judged against).
    pub fn tightest_slo_ms(&self) -> f64 {
        self.classes()
            .iter()
            .map(|(_, slo)| *slo)
            .fold(f64::INFINITY, f64::min)
    }

    /// `http://host:port` for tonic, from host:port or grpc://host:port.
    pub fn endpoint_uri(&self) -> Result<String, String> {
        let url = self.url.trim().trim_end_matches('/');
        let rest = match url.split_once("://") {
            None => url,
            Some(("grpc" | "http", rest)) => rest,
            Some(("grpcs" | "https", _)) => {
                return Err("TLS (grpcs://) is not supported; benchmark a plaintext port".into())
            }
            Some((scheme, _)) => return Err(format!("--url: unknown scheme {scheme:?}")),
        };
        if rest.is_empty() || !rest.contains(':') {
            return Err(format!("--url must be host:port, not {:?}", self.url));
        }
        Ok(format!("http://{rest}"))
    }

    /// Checks clap cannot express; a message naming the flag on failure.
    pub fn validate(&self) -> Result<(), String> {
        self.endpoint_uri()?;
        if self.model.is_empty() {
            return Err("--model must not be empty".into());
        }
        if self.input_shape.is_some() && !self.inputs.is_empty() {
            return Err("--input-shape goes with --from-metadata, not --input".into());
        }
        match (self.arrival, self.cv) {
            (Arrival::Gamma, None) => return Err("--arrival gamma needs --cv (e.g. --cv 4)".into()),
            (Arrival::Poisson | Arrival::Constant, Some(_)) => {
                return Err("--cv goes with --arrival gamma".into())
            }
            _ => {}
        }
        if self.deadline_mix.is_some() {
            if self.rate.is_none() {
                return Err("--deadline-mix needs open loop (--rate)".into());
            }
            if self.deadline_ms.is_some() {
                return Err("--deadline-mix sets each class's deadline; drop --deadline-ms".into());
            }
        }
        if let Some(rate) = self.rate {
            let expected = rate * (self.warmup + self.duration);
            if expected > 200e6 {
                return Err(format!(
                    "--rate x (--warmup + --duration) = {expected:.0} requests: at most 200 million"
                ));
            }
        }
        Ok(())
    }
}

fn positive(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("expected a positive number, not {text:?}")),
    }
}

fn non_negative(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("expected a number >= 0, not {text:?}")),
    }
}

/// `5:0.5,50:0.5`: distinct positive deadlines (ms) with shares >= 0, normalized to add up to 1.
pub fn parse_mix(text: &str) -> Result<DeadlineMix, String> {
    let bad = || {
        format!(
            "expected DEADLINE_MS:SHARE,... with distinct positive deadlines and shares >= 0 \
             (e.g. 5:0.5,50:0.5), not {text:?}"
        )
    };
    let mut classes = Vec::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (ms, share) = match part.split_once(':') {
            Some((ms, share)) => (ms.trim().parse::<f64>(), share.trim().parse::<f64>()),
            None => (part.trim().parse::<f64>(), Ok(1.0)),
        };
        match (ms, share) {
            (Ok(ms), Ok(share))
                if ms.is_finite() && ms > 0.0 && share.is_finite() && share >= 0.0 =>
            {
                classes.push(DeadlineClass {
                    deadline_ms: ms,
                    share,
                })
            }
            _ => return Err(bad()),
        }
    }
    let total: f64 = classes.iter().map(|c| c.share).sum();
    let distinct = classes
        .iter()
        .enumerate()
        .all(|(i, c)| classes[..i].iter().all(|d| d.deadline_ms != c.deadline_ms));
    if classes.is_empty() || classes.len() > 255 || total <= 0.0 || !distinct {
        return Err(bad());
    }
    for c in &mut classes {
        c.share /= total;
    }
    Ok(DeadlineMix(classes))
}

/// `1x256`, `1,256` or `256`: non-negative dims.
pub fn parse_dims(text: &str) -> Result<Vec<i64>, String> {
    let dims: Result<Vec<i64>, _> = text
        .split(['x', 'X', ','])
        .filter(|part| !part.trim().is_empty())
        .map(|part| part.trim().parse::<i64>())
        .collect();
    match dims {
        Ok(dims) if !dims.is_empty() && dims.iter().all(|d| *d >= 0) => Ok(dims),
        _ => Err(format!(
            "expected dims like 256 or 1x3x224x224, not {text:?}"
        )),
    }
}

/// NAME:DATATYPE:DIMS; the name may itself contain colons.
pub fn parse_input(text: &str) -> Result<InputSpec, String> {
    let mut parts = text.rsplitn(3, ':');
    let (dims, datatype, name) = match (parts.next(), parts.next(), parts.next()) {
        (Some(d), Some(t), Some(n)) if !n.is_empty() => (d, t, n),
        _ => {
            return Err(format!(
                "expected NAME:DATATYPE:DIMS (e.g. input:FP32:1x256), not {text:?}"
            ))
        }
    };
    let datatype = datatype.trim().to_ascii_uppercase();
    if !DATATYPES.contains(&datatype.as_str()) {
        return Err(format!(
            "unknown datatype {datatype:?}; one of {}",
            DATATYPES.join(", ")
        ));
    }
    let dims = parse_dims(dims)?;
    tensor_size_ok(&datatype, &dims)?;
    Ok(InputSpec {
        name: name.to_string(),
        datatype,
        dims,
    })
}

/// Refuse tensors whose byte size overflows or exceeds 1 GiB (a typo, not a benchmark).
pub fn tensor_size_ok(datatype: &str, dims: &[i64]) -> Result<(), String> {
    let mut count: u64 = 1;
    for d in dims {
        count = count.checked_mul(*d as u64).ok_or("tensor too large")?;
    }
    let bytes = count.saturating_mul(element_size(datatype).unwrap_or(5) as u64);
    if bytes > 1 << 30 {
        return Err(format!(
            "tensor of {dims:?} {datatype} is {bytes} bytes: at most 1 GiB"
        ));
    }
    Ok(())
}

/// KEY=VALUE: true/false, then int, then float, else a string.
pub fn parse_param(text: &str) -> Result<(String, ParamValue), String> {
    let (key, value) = match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => (k.to_string(), v),
        _ => return Err(format!("expected KEY=VALUE, not {text:?}")),
    };
    let parsed = match value.to_ascii_lowercase().as_str() {
        "true" => ParamValue::Bool(true),
        "false" => ParamValue::Bool(false),
        _ => {
            if let Ok(i) = value.parse::<i64>() {
                ParamValue::Int(i)
            } else if let Some(f) = value.parse::<f64>().ok().filter(|f| f.is_finite()) {
                ParamValue::Double(f)
            } else {
                ParamValue::Str(value.to_string())
            }
        }
    };
    Ok((key, parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut argv = vec!["kairos-loadgen", "--model", "m"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
    }

    #[test]
    fn inputs_dims_and_params_parse() {
        let spec = parse_input("input:fp32:1x256").unwrap();
        assert_eq!(
            spec,
            InputSpec {
                name: "input".into(),
                datatype: "FP32".into(),
                dims: vec![1, 256]
            }
        );
        assert_eq!(parse_input("a:b:BYTES:2").unwrap().name, "a:b");
        assert!(parse_input("input:FP33:1").is_err());
        assert!(parse_input("input:FP32").is_err());
        assert!(parse_input("input:FP32:-1x4").is_err());
        assert!(parse_input("input:FP32:100000x100000x100000").is_err());
        assert_eq!(parse_dims("3,224x224").unwrap(), vec![3, 224, 224]);
        assert_eq!(
            parse_param("priority=1").unwrap(),
            ("priority".into(), ParamValue::Int(1))
        );
        assert_eq!(parse_param("f=TRUE").unwrap().1, ParamValue::Bool(true));
        assert_eq!(parse_param("d=2.5").unwrap().1, ParamValue::Double(2.5));
        assert_eq!(
            parse_param("s=a=b").unwrap().1,
            ParamValue::Str("a=b".into())
        );
        assert!(parse_param("=1").is_err());
    }

    #[test]
    fn load_mode_is_required_and_exclusive() {
        assert!(args(&[]).is_err());
        assert!(args(&["--rate", "10", "--concurrency", "2"]).is_err());
        assert!(args(&["--rate", "0"]).is_err());
        assert!(args(&["--rate", "nan"]).is_err());
        assert!(args(&["--concurrency", "0"]).is_err());
        let a = args(&["--rate", "1000", "--arrival", "constant"]).unwrap();
        assert_eq!(a.rate, Some(1000.0));
        assert_eq!(a.arrival, Arrival::Constant);
        assert!(args(&[
            "--concurrency",
            "4",
            "--input",
            "x:FP32:1",
            "--from-metadata"
        ])
        .is_err());
    }

    #[test]
    fn gamma_needs_a_cv_and_mixes_parse_and_normalize() {
        assert!(args(&["--rate", "10", "--arrival", "gamma"])
            .unwrap()
            .validate()
            .is_err());
        assert!(args(&["--rate", "10", "--cv", "4"])
            .unwrap()
            .validate()
            .is_err());
        let a = args(&["--rate", "10", "--arrival", "gamma", "--cv", "4"]).unwrap();
        assert!(a.validate().is_ok());
        assert_eq!(a.cv, Some(4.0));
        let mix = parse_mix("5:1,50:3").unwrap().0;
        assert_eq!(mix[0].deadline_ms, 5.0);
        assert!((mix[0].share - 0.25).abs() < 1e-12 && (mix[1].share - 0.75).abs() < 1e-12);
        for bad in ["", "5:0.5,5:0.5", "0:1", "5:-1", "a:1", "5:0"] {
            assert!(parse_mix(bad).is_err(), "{bad}");
        }
        let a = args(&["--rate", "10", "--deadline-mix", "5:0.5,50:0.5"]).unwrap();
        assert!(a.validate().is_ok());
        let classes = a.classes();
        assert_eq!(classes.len(), 2);
        assert_eq!(classes[1], (Some(Duration::from_millis(50)), 50.0));
        assert_eq!(a.tightest_slo_ms(), 5.0);
        let a = args(&["--rate", "1", "--deadline-mix", "5", "--deadline-ms", "3"]).unwrap();
        assert!(a.validate().is_err());
        let a = args(&["--concurrency", "1", "--deadline-mix", "5"]).unwrap();
        assert!(a.validate().is_err());
    }

    #[test]
    fn deadline_defaults_to_the_slo_and_zero_means_none() {
        let a = args(&["--rate", "1", "--slo-ms", "5"]).unwrap();
        assert_eq!(a.deadline(), Some(Duration::from_millis(5)));
        let a = args(&["--rate", "1", "--deadline-ms", "0"]).unwrap();
        assert_eq!(a.deadline(), None);
        let a = args(&["--rate", "1", "--deadline-ms", "0.001"]).unwrap();
        assert_eq!(a.deadline(), Some(Duration::from_micros(1)));
    }

    #[test]
    fn urls_are_plain_host_port() {
        let uri = |u: &str| args(&["--rate", "1", "--url", u]).unwrap().endpoint_uri();
        assert_eq!(uri("127.0.0.1:8001").unwrap(), "http://127.0.0.1:8001");
        assert_eq!(uri("grpc://h:1/").unwrap(), "http://h:1");
        assert!(uri("grpcs://h:1").is_err());
        assert!(uri("localhost").is_err());
        let a = args(&["--rate", "1e9", "--duration", "1"]).unwrap();
        assert!(a.validate().is_err());
    }
}
