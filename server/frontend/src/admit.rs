//! Deadlines and request parameters, read natively at receipt.

use crate::errors::{short, Refusal};
use crate::pb::infer_parameter::ParameterChoice;
use crate::pb::InferParameter;
use std::collections::HashMap;

pub const BATCH_CLASS_PARAMETER: &str = "kairos_class";
/// A floor on the accuracy of the model-group variant that may serve the request.
pub const MIN_ACCURACY_PARAMETER: &str = "kairos_min_accuracy";

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parameters {
    pub timeout_us: Option<i64>,
    pub priority: i64,
    pub batch_class: bool,
    pub min_accuracy: f64,
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

fn fraction(parameter: &InferParameter, name: &str) -> Result<f64, Refusal> {
    let value = match &parameter.parameter_choice {
        Some(ParameterChoice::DoubleParam(v)) => Some(*v),
        Some(ParameterChoice::Int64Param(v)) => Some(*v as f64),
        Some(ParameterChoice::Uint64Param(v)) => Some(*v as f64),
        _ => None,
    };
    match value {
        Some(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Some(v) => Err(Refusal::invalid(format!(
            "parameter '{name}' must be a number in [0, 1] (double_param), not {v}"
        ))),
        None => Err(Refusal::invalid(format!(
            "parameter '{name}' must be a number in [0, 1] (double_param), not {}",
            choice_name(&parameter.parameter_choice)
        ))),
    }
}

/// (timeout, priority, class, accuracy floor) from the request parameters; others are ignored, as V2
/// servers do.
pub fn read_parameters(
    parameters: &HashMap<String, InferParameter>,
) -> Result<Parameters, Refusal> {
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
    if let Some(p) = parameters.get(MIN_ACCURACY_PARAMETER) {
        out.min_accuracy = fraction(p, MIN_ACCURACY_PARAMETER)?;
    }
    if let Some(p) = parameters.get(BATCH_CLASS_PARAMETER) {
        out.batch_class = match &p.parameter_choice {
            Some(ParameterChoice::StringParam(s)) if s == "online" => false,
            Some(ParameterChoice::StringParam(s)) if s == "batch" => true,
            other => {
                let shown = match other {
                    Some(ParameterChoice::StringParam(s)) => format!("'{}'", short(s)),
                    Some(ParameterChoice::BoolParam(b)) => {
                        (if *b { "True" } else { "False" }).into()
                    }
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
    let amount = amount as f64;
    Some(match unit {
        "H" => amount * 3600.0,
        "M" => amount * 60.0,
        "S" => amount,
        "m" => amount / 1e3,
        "u" => amount / 1e6,
        "n" => amount / 1e9,
        _ => return None,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn int(v: i64) -> InferParameter {
        InferParameter {
            parameter_choice: Some(ParameterChoice::Int64Param(v)),
        }
    }

    fn double(v: f64) -> InferParameter {
        InferParameter {
            parameter_choice: Some(ParameterChoice::DoubleParam(v)),
        }
    }

    fn text(v: &str) -> InferParameter {
        InferParameter {
            parameter_choice: Some(ParameterChoice::StringParam(v.into())),
        }
    }

    #[test]
    fn grpc_timeouts_parse_every_unit_and_ignore_garbage() {
        assert_eq!(grpc_timeout(Some("10m")), Some(0.01));
        assert_eq!(grpc_timeout(Some("2S")), Some(2.0));
        assert_eq!(grpc_timeout(Some("1H")), Some(3600.0));
        assert_eq!(grpc_timeout(Some("5u")), Some(5e-6));
        assert_eq!(grpc_timeout(Some("100n")), Some(1e-7));
        assert_eq!(grpc_timeout(Some("3M")), Some(180.0));
        assert_eq!(grpc_timeout(Some("m")), None);
        assert_eq!(grpc_timeout(Some("12x")), None);
        assert_eq!(grpc_timeout(Some("1234567890S")), None);
        assert_eq!(grpc_timeout(None), None);
    }

    #[test]
    fn the_earlier_of_grpc_deadline_and_timeout_wins_else_slo_else_default() {
        assert_eq!(
            deadline(10.0, Some(0.5), Some(100_000), Some(2.0), 1.0),
            10.1
        );
        assert_eq!(deadline(10.0, Some(0.05), Some(100_000), None, 1.0), 10.05);
        assert_eq!(deadline(10.0, None, None, Some(2.0), 1.0), 12.0);
        assert_eq!(deadline(10.0, None, None, None, 1.0), 11.0);
    }

    #[test]
    fn parameters_are_type_checked() {
        let mut p = HashMap::new();
        p.insert("timeout".to_string(), int(5000));
        p.insert("priority".to_string(), int(2));
        p.insert("kairos_class".to_string(), text("batch"));
        p.insert("kairos_min_accuracy".to_string(), double(0.5));
        p.insert("other".to_string(), text("ignored"));
        let read = read_parameters(&p).unwrap_or_default();
        assert_eq!(
            read,
            Parameters {
                timeout_us: Some(5000),
                priority: 2,
                batch_class: true,
                min_accuracy: 0.5,
            }
        );
        for (key, value, expected) in [
            ("timeout", int(0), "positive number of microseconds"),
            (
                "timeout",
                text("5"),
                "must be an integer (int64_param), not string_param",
            ),
            ("priority", int(-1), "must be >= 0"),
            (
                "kairos_min_accuracy",
                double(1.5),
                "in [0, 1] (double_param), not 1.5",
            ),
            (
                "kairos_min_accuracy",
                text("high"),
                "in [0, 1] (double_param), not string_param",
            ),
            (
                "kairos_class",
                text("urgent"),
                "'online' or 'batch', not 'urgent'",
            ),
        ] {
            let mut p = HashMap::new();
            p.insert(key.to_string(), value);
            let err = read_parameters(&p).unwrap_err();
            assert!(err.message.contains(expected), "{}", err.message);
        }
    }

    #[test]
    fn the_monotonic_clock_advances() {
        let a = monotonic();
        let b = monotonic();
        assert!(b >= a && a > 0.0);
    }
}
