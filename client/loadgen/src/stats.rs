//! Records to the numbers `kairos bench` reports; field names as client/bench/stats.py's
//! `summarize` writes them, so the Python side prints and plots both engines the same way.
//!
//! Only requests *scheduled* inside the measured window count, and counts are divided by the
//! window's length. Percentiles interpolate linearly between ranks, as numpy's default does.
//!
//! *Admitted* requests are those not refused at admission (RESOURCE_EXHAUSTED); a request the
//! server expired (DEADLINE_EXCEEDED) counts as admitted and missed. With a deadline mix each
//! request is judged against its own class's deadline, and each class gets its own figures.

use serde_json::{json, Map, Value};

/// Status of a request still outstanding when the run stopped waiting for it.
pub const UNFINISHED: i32 = -1;
pub const OK: i32 = 0;
const RESOURCE_EXHAUSTED: i32 = 8;

const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The gRPC status name of a numeric code (as grpc.StatusCode names it).
pub fn status_name(code: i32) -> String {
    if code == UNFINISHED {
        return "UNFINISHED".into();
    }
    usize::try_from(code)
        .ok()
        .and_then(|i| CODE_NAMES.get(i))
        .map_or_else(|| format!("CODE_{code}"), |name| (*name).to_string())
}

/// Column-wise records, nanoseconds on one monotonic clock from the run's start.
#[derive(Debug, Default, Clone)]
pub struct Records {
    pub scheduled: Vec<u64>,
    pub sent: Vec<u64>,
    pub ended: Vec<u64>,
    pub codes: Vec<i32>,
    /// Deadline class of each request (empty: one class).
    pub classes: Vec<u8>,
}

impl Records {
    pub fn with_capacity(n: usize) -> Self {
        Records {
            scheduled: Vec::with_capacity(n),
            sent: Vec::with_capacity(n),
            ended: Vec::with_capacity(n),
            codes: Vec::with_capacity(n),
            classes: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn extend(&mut self, other: Records) {
        self.scheduled.extend(other.scheduled);
        self.sent.extend(other.sent);
        self.ended.extend(other.ended);
        self.codes.extend(other.codes);
        self.classes.extend(other.classes);
    }
}

/// The `q`-th percentile (0..=100) of sorted values, linear interpolation (numpy's default).
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let pos = (q / 100.0).clamp(0.0, 1.0) * last as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
}

fn round4(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn sorted_ms(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

/// p50/p90/p99/p99.9, mean and max in ms of sorted ms values (nulls when empty).
pub fn percentiles_ms(sorted: &[f64]) -> Value {
    let pick = |q: f64| percentile(sorted, q).map(round4);
    let mean =
        (!sorted.is_empty()).then(|| round4(sorted.iter().sum::<f64>() / sorted.len() as f64));
    json!({
        "p50": pick(50.0), "p90": pick(90.0), "p99": pick(99.0), "p99.9": pick(99.9),
        "mean": mean, "max": sorted.last().copied().map(round4),
    })
}

/// Latency at 101 evenly spaced quantiles, ms (what plots redraw the CDF from).
pub fn cdf_ms(sorted: &[f64]) -> Vec<f64> {
    if sorted.is_empty() {
        return Vec::new();
    }
    (0..=100)
        .filter_map(|i| percentile(sorted, f64::from(i)).map(round4))
        .collect()
}

/// What summarize needs besides the records.
#[derive(Clone)]
pub struct Window {
    pub start_ns: u64,
    pub end_ns: u64,
    pub slo_ms: f64,
    pub rows: u32,
    pub open_loop: bool,
    /// A deadline mix: (deadline ms, share) per class, indexed by `Records::classes`.
    pub mix: Vec<(f64, f64)>,
}

/// Throughput, goodput, latency of OK answers, statuses with their answer times, lateness.
pub fn summarize(records: &Records, window: &Window) -> Map<String, Value> {
    let (start, end) = (window.start_ns, window.end_ns);
    let duration = (end - start) as f64 / 1e9;
    let sent_in_window = records
        .sent
        .iter()
        .filter(|s| (start..end).contains(*s))
        .count();
    let measured: Vec<usize> = (0..records.len())
        .filter(|i| (start..end).contains(&records.scheduled[*i]))
        .collect();
    let mixed = !window.mix.is_empty() && records.classes.len() == records.len();
    let class_of = |i: usize| {
        if mixed {
            records.classes[i] as usize
        } else {
            0
        }
    };
    let slo_of = |i: usize| {
        if mixed {
            window.mix[class_of(i)].0
        } else {
            window.slo_ms
        }
    };
    let per_s = |count: usize| ((count as f64 / duration) * 100.0).round() / 100.0;
    let mut out = Map::new();
    out.insert("duration_s".into(), json!(round4(duration)));
    out.insert("sent".into(), json!(sent_in_window));
    out.insert("send_rate".into(), json!(per_s(sent_in_window)));
    out.extend(figures(
        records,
        &measured,
        &slo_of,
        duration,
        window.rows,
        true,
    ));
    if mixed {
        let classes: Vec<Value> = window
            .mix
            .iter()
            .enumerate()
            .map(|(index, (deadline_ms, share))| {
                let mine: Vec<usize> = measured
                    .iter()
                    .copied()
                    .filter(|i| class_of(*i) == index)
                    .collect();
                let mut class = Map::new();
                class.insert("deadline_ms".into(), json!(deadline_ms));
                class.insert("share".into(), json!(share));
                class.extend(figures(
                    records,
                    &mine,
                    &slo_of,
                    duration,
                    window.rows,
                    false,
                ));
                Value::Object(class)
            })
            .collect();
        out.insert("classes".into(), Value::Array(classes));
    }
    if window.open_loop {
        let late = sorted_ms(
            measured
                .iter()
                .map(|i| ms(records.sent[*i].saturating_sub(records.scheduled[*i])))
                .collect(),
        );
        out.insert("lateness_ms".into(), lateness(&late));
    }
    out
}

/// Counts, goodput (each request within its own `slo_of` deadline), attainment of all and of
/// the admitted, latency of the OK answers and statuses, over the requests `measured`.
fn figures(
    records: &Records,
    measured: &[usize],
    slo_of: &dyn Fn(usize) -> f64,
    duration: f64,
    rows: u32,
    cdf: bool,
) -> Map<String, Value> {
    let latency = |i: usize| ms(records.ended[i].saturating_sub(records.sent[i]));
    let answered: Vec<usize> = measured
        .iter()
        .copied()
        .filter(|i| records.codes[*i] == OK)
        .collect();
    let good = answered
        .iter()
        .filter(|i| latency(**i) <= slo_of(**i))
        .count();
    let ok = sorted_ms(answered.iter().map(|i| latency(*i)).collect());
    let requests = measured.len();
    let refused = measured
        .iter()
        .filter(|i| records.codes[**i] == RESOURCE_EXHAUSTED)
        .count();
    let admitted = requests - refused;
    let per_s = |count: usize| ((count as f64 / duration) * 100.0).round() / 100.0;
    let share = |part: usize, whole: usize| ((part as f64 / whole as f64) * 1e5).round() / 1e5;
    let mut out = Map::new();
    out.insert("requests".into(), json!(requests));
    out.insert("ok".into(), json!(ok.len()));
    out.insert("throughput".into(), json!(per_s(ok.len())));
    out.insert("goodput".into(), json!(per_s(good)));
    out.insert("rows_per_s".into(), json!(per_s(ok.len() * rows as usize)));
    out.insert("slo_attainment".into(), json!(share(good, requests.max(1))));
    out.insert("admitted".into(), json!(admitted));
    out.insert(
        "admitted_attainment".into(),
        json!((admitted > 0).then(|| share(good, admitted))),
    );
    out.insert("latency_ms".into(), percentiles_ms(&ok));
    if cdf {
        out.insert("latency_cdf_ms".into(), json!(cdf_ms(&ok)));
    }
    let (errors, counts) = by_status(records, measured);
    out.insert("errors".into(), Value::Object(errors));
    out.insert("status_counts".into(), Value::Object(counts));
    out
}

/// Per non-OK status: count and answer-time p50/p99 (is a refusal fast?); and counts of all.
fn by_status(records: &Records, measured: &[usize]) -> (Map<String, Value>, Map<String, Value>) {
    let mut codes: Vec<i32> = measured.iter().map(|i| records.codes[*i]).collect();
    codes.sort_unstable();
    codes.dedup();
    let (mut errors, mut counts) = (Map::new(), Map::new());
    for code in codes {
        let of_code: Vec<usize> = measured
            .iter()
            .copied()
            .filter(|i| records.codes[*i] == code)
            .collect();
        counts.insert(status_name(code), json!(of_code.len()));
        if code == OK {
            continue;
        }
        let times = if code == UNFINISHED {
            Vec::new()
        } else {
            sorted_ms(
                of_code
                    .iter()
                    .map(|i| ms(records.ended[*i].saturating_sub(records.sent[*i])))
                    .collect(),
            )
        };
        let pick = |q: f64| percentile(&times, q).map(round4);
        errors.insert(
            status_name(code),
            json!({"count": of_code.len(), "p50_ms": pick(50.0), "p99_ms": pick(99.0)}),
        );
    }
    (errors, counts)
}

fn lateness(sorted: &[f64]) -> Value {
    let pick = |q: f64| percentile(sorted, q).map(round4);
    json!({"p50": pick(50.0), "p99": pick(99.0), "max": sorted.last().copied().map(round4)})
}

/// Whether an open-loop generator sent on schedule (client/bench/stats.py `kept_up`).
pub fn kept_up(summary: &Map<String, Value>, offered_rate: f64, slo_ms: f64) -> bool {
    let Some(p99) = summary.get("lateness_ms").and_then(|l| l["p99"].as_f64()) else {
        return true;
    };
    let send_rate = summary
        .get("send_rate")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    send_rate >= 0.97 * offered_rate && p99 <= f64::max(2.0, 0.2 * slo_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_match_numpy_linear_interpolation() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        // numpy.percentile(range(1, 11), [50, 90, 99, 99.9, 0, 100])
        assert_eq!(percentile(&v, 50.0), Some(5.5));
        assert!((percentile(&v, 90.0).unwrap() - 9.1).abs() < 1e-12);
        assert!((percentile(&v, 99.0).unwrap() - 9.91).abs() < 1e-12);
        assert!((percentile(&v, 99.9).unwrap() - 9.991).abs() < 1e-12);
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 100.0), Some(10.0));
        assert_eq!(percentile(&[3.0], 99.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(cdf_ms(&v).len(), 101);
        assert_eq!(percentiles_ms(&[])["p50"], Value::Null);
    }

    #[test]
    fn status_names_are_grpcs() {
        assert_eq!(status_name(0), "OK");
        assert_eq!(status_name(4), "DEADLINE_EXCEEDED");
        assert_eq!(status_name(8), "RESOURCE_EXHAUSTED");
        assert_eq!(status_name(16), "UNAUTHENTICATED");
        assert_eq!(status_name(-1), "UNFINISHED");
        assert_eq!(status_name(99), "CODE_99");
    }

    #[test]
    fn summary_counts_only_the_window_and_splits_statuses() {
        let s = 1_000_000_000u64; // the window is [1 s, 2 s)
        let mut r = Records::default();
        // (scheduled, sent, ended, code)
        let rows = [
            (s / 2, s / 2, s / 2 + 1_000_000, OK), // warm-up: ignored
            (s, s + 100_000, s + 2_100_000, OK),   // 2 ms, good
            (s + 10, s + 10, s + 20_000_010, OK),  // 20 ms: OK but not good
            (s + 20, s + 20, s + 300_020, 4),      // DEADLINE_EXCEEDED in 0.3 ms
            (s + 30, s + 30, 0, UNFINISHED),       // never answered
            (2 * s, 2 * s, 2 * s + 1, OK),         // after the window: ignored
        ];
        for (a, b, c, d) in rows {
            r.scheduled.push(a);
            r.sent.push(b);
            r.ended.push(c);
            r.codes.push(d);
        }
        let w = Window {
            start_ns: s,
            end_ns: 2 * s,
            slo_ms: 10.0,
            rows: 3,
            open_loop: true,
            mix: Vec::new(),
        };
        let out = summarize(&r, &w);
        assert_eq!(out["requests"], 4);
        assert_eq!(out["sent"], 4);
        assert_eq!(out["ok"], 2);
        assert_eq!(out["throughput"], 2.0);
        assert_eq!(out["goodput"], 1.0);
        assert_eq!(out["rows_per_s"], 6.0);
        assert_eq!(out["slo_attainment"], 0.25);
        assert_eq!(out["latency_ms"]["max"], 20.0);
        assert_eq!(out["errors"]["DEADLINE_EXCEEDED"]["count"], 1);
        assert_eq!(out["errors"]["DEADLINE_EXCEEDED"]["p50_ms"], 0.3);
        assert_eq!(out["errors"]["UNFINISHED"]["p50_ms"], Value::Null);
        assert_eq!(out["status_counts"]["OK"], 2);
        assert_eq!(out["lateness_ms"]["max"], 0.1);
        assert_eq!(out["admitted"], 4); // no RESOURCE_EXHAUSTED here
        assert_eq!(out["admitted_attainment"], 0.25);
        assert!(!out.contains_key("classes"));
        // the same records as a mix: 10 ms and 30 ms classes
        r.classes = vec![0, 1, 1, 0, 0, 0];
        r.codes[3] = 8; // now refused at admission
        let mixed = summarize(
            &r,
            &Window {
                mix: vec![(10.0, 0.5), (30.0, 0.5)],
                ..w.clone()
            },
        );
        assert_eq!(mixed["goodput"], 2.0); // the 20 ms answer makes its 30 ms deadline
        assert_eq!(mixed["admitted"], 3);
        let classes = mixed["classes"].as_array().unwrap();
        assert_eq!(classes[0]["requests"], 2);
        assert_eq!(classes[0]["admitted"], 1);
        assert_eq!(classes[0]["goodput"], 0.0);
        assert_eq!(classes[1]["requests"], 2);
        assert_eq!(classes[1]["goodput"], 2.0);
        assert_eq!(classes[1]["slo_attainment"], 1.0);
        assert!(!kept_up(&out, 4.0, 10.0) || out["send_rate"].as_f64().unwrap() >= 3.88);
        let closed = summarize(
            &r,
            &Window {
                open_loop: false,
                ..w
            },
        );
        assert!(!closed.contains_key("lateness_ms"));
        assert!(kept_up(&closed, 1e6, 10.0));
    }
}
