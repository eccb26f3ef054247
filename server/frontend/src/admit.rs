//! Deadlines and request parameters, read natively at receipt.

use crate::errors::{short, Refusal};
use crate::pb::infer_parameter::ParameterChoice;
use crate::pb::InferParameter;
use std::collections::HashMap;

pub const BATCH_CLASS_PARAMETER: &str = "kairos_class";

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parameters {
    pub timeout_us: Option<i64>,
    pub priority: i64,
    pub batch_class: bool,
}

fn choice_name(choice: &Option<ParameterChoice>) -> &'static str {
    match choice {
        None => "unset",
        Some(ParameterChoice::BoolParam(_)) => "bool_param",
        Some(ParameterChoice::Int64Param(_)) => "int64_param",
        Some(ParameterChoice::StringParam(_)) => "string_param",
        Some(ParameterChoice::DoubleParam(_)) => "double_param",
        Some(ParameterChoice::Uint64Param(_)) => "uint64_param",
    }
}

fn integer(parameter: &InferParameter, name: &str) -> Result<i64, Refusal> {
    match &parameter.parameter_choice {
        Some(ParameterChoice::Int64Param(v)) => Ok(*v),
        Some(ParameterChoice::Uint64Param(v)) => Ok(i64::try_from(*v).unwrap_or(i64::MAX)),
        other => Err(Refusal::invalid(format!(
            "parameter '{name}' must be an integer (int64_param), not {}",
            choice_name(other)
        ))),
    }
}

/// (timeout, priority, class) from the request parameters; others are ignored, as V2
/// servers do.
pub fn read_parameters(parameters: &HashMap<String, InferParameter>) -> Result<Parameters, Refusal> {
    let mut out = Parameters::default();
    if let Some(p) = parameters.get("timeout") {
        let timeout = integer(p, "timeout")?;
        if timeout <= 0 {
            return Err(Refusal::invalid(format!(
                "parameter 'timeout' must be a positive number of microseconds, not {timeout}"
            )));
        }
        out.timeout_us = Some(timeout);
    }
    if let Some(p) = parameters.get("priority") {
        let priority = integer(p, "priority")?;
        if priority < 0 {
            return Err(Refusal::invalid(format!(
                "parameter 'priority' must be >= 0, not {priority}"
            )));
        }
        out.priority = priority;
    }
    if let Some(p) = parameters.get(BATCH_CLASS_PARAMETER) {
        out.batch_class = match &p.parameter_choice {
            Some(ParameterChoice::StringParam(s)) if s == "online" => false,
            Some(ParameterChoice::StringParam(s)) if s == "batch" => true,
            other => {
                let shown = match other {
                    Some(ParameterChoice::StringParam(s)) => format!("'{}'", short(s)),
                    Some(ParameterChoice::BoolParam(b)) => (if *b { "True" } else { "False" }).into(),
                    Some(ParameterChoice::Int64Param(v)) => v.to_string(),
                    Some(ParameterChoice::Uint64Param(v)) => v.to_string(),
                    Some(ParameterChoice::DoubleParam(v)) => v.to_string(),
                    None => "None".into(),
                };
                return Err(Refusal::invalid(format!(
                    "parameter '{BATCH_CLASS_PARAMETER}' must be the string 'online' or 'batch', not {shown}"
                )));
            }
        };
    }
    Ok(out)
}

/// Seconds left by a `grpc-timeout` header ("<digits><H|M|S|m|u|n>"); None when absent
/// or malformed (a malformed one is ignored, as gRPC servers do).
pub fn grpc_timeout(value: Option<&str>) -> Option<f64> {
    let value = value?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    let scale = match unit {
        "H" => 3600.0,
        "M" => 60.0,
        "S" => 1.0,
        "m" => 1e-3,
        "u" => 1e-6,
        "n" => 1e-9,
        _ => return None,
    };
    Some(amount as f64 * scale)
}

/// The absolute deadline: the gRPC deadline and the `timeout` parameter (the earlier
/// wins), else the model's SLO, else the server's default.
pub fn deadline(
    arrival: f64,
    remaining: Option<f64>,
    timeout_us: Option<i64>,
    slo_s: Option<f64>,
    default_slo_s: f64,
) -> f64 {
    let limit = match (remaining, timeout_us) {
        (Some(r), Some(t)) => r.min(t as f64 / 1e6),
        (Some(r), None) => r,
        (None, Some(t)) => t as f64 / 1e6,
        (None, None) => slo_s.unwrap_or(default_slo_s),
    };
    arrival + limit
}

/// CLOCK_MONOTONIC in seconds: the clock Python's `time.monotonic()` reads, so stamps
/// taken here compare directly with the scheduler's.
pub fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
