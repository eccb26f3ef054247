//! The engine: fires the pre-encoded request over round-robin HTTP/2 connections, open loop
//! (each request at its scheduled time, whatever the answers do) or closed loop (N in flight),
//! and records when each was scheduled, sent and answered, and how.

use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::codec::RawCodec;
use crate::h2conn::H2Target;
use crate::stats::{Records, OK, UNFINISHED};
use crate::timer::PreciseTimer;

pub const INFER_PATH: &str = "/inference.GRPCInferenceService/ModelInfer";
const DEADLINE_EXCEEDED: i32 = Code::DeadlineExceeded as i32;
/// When behind schedule, yield to the answers after this many sends in a row.
const BURST: usize = 32;

/// How calls travel: tonic's channel with a pass-through codec, or straight h2 streams.
enum Transport {
    Tonic {
        channels: Vec<Channel>,
        payload: Bytes,
        codec: RawCodec,
        path: PathAndQuery,
        /// grpc-timeout per deadline class
        timeouts: Vec<Option<MetadataValue<tonic::metadata::Ascii>>>,
    },
    H2(H2Target),
}

/// What every call needs: the connections, the bytes, the deadline; and the first message
/// of each error code seen.
pub struct Target {
    transport: Transport,
    /// Codes whose first message was kept (bit per code), and those messages.
    seen: AtomicU32,
    messages: Mutex<Vec<(i32, String)>>,
}

impl Target {
    fn with(transport: Transport) -> Self {
        Target {
            transport,
            seen: AtomicU32::new(0),
            messages: Mutex::default(),
        }
    }

    /// Calls through tonic channels (one HTTP/2 connection each); one deadline per class.
    pub fn tonic(channels: Vec<Channel>, payload: Bytes, deadlines: &[Option<Duration>]) -> Self {
        let codec = RawCodec::for_payload(payload.len());
        let timeouts = deadlines
            .iter()
            .map(|d| d.and_then(|d| MetadataValue::try_from(grpc_timeout(d)).ok()))
            .collect();
        let path = PathAndQuery::from_static(INFER_PATH);
        Self::with(Transport::Tonic {
            channels,
            payload,
            codec,
            path,
            timeouts,
        })
    }

    /// Calls as bare h2 streams.
    pub fn h2(target: H2Target) -> Self {
        Self::with(Transport::H2(target))
    }

    /// One ModelInfer of deadline class `class` on connection `index % connections`; its
    /// numeric gRPC status.
    pub async fn call(&self, index: usize, class: usize) -> i32 {
        match &self.transport {
            Transport::Tonic {
                channels,
                payload,
                codec,
                path,
                timeouts,
            } => {
                let channel = channels[index % channels.len()].clone();
                let mut grpc = Grpc::new(channel);
                if grpc.ready().await.is_err() {
                    return Code::Unavailable as i32;
                }
                let mut request = Request::new(payload.clone());
                if let Some(value) = &timeouts[class] {
                    request.metadata_mut().insert("grpc-timeout", value.clone());
                }
                match grpc
                    .unary::<Bytes, (), RawCodec>(request, path.clone(), *codec)
                    .await
                {
                    Ok(_) => OK,
                    Err(status) => {
                        let code = status_code(&status);
                        self.note(code, status.message());
                        code
                    }
                }
            }
            Transport::H2(target) => {
                let (code, message) = target.call(index, class).await;
                if let Some(message) = message {
                    self.note(code, &message);
                }
                code
            }
        }
    }

    /// Keeps the first message of each error code (what the server said, or the transport).
    fn note(&self, code: i32, message: &str) {
        let bit = 1u32 << (code.clamp(0, 31) as u32);
        if self.seen.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            let text: String = message.chars().take(160).collect();
            let mut messages = self
                .messages
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            messages.push((code, text));
        }
    }

    /// The first message seen for each error code, by code.
    pub fn messages(&self) -> Vec<(i32, String)> {
        let mut out = self
            .messages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        out.sort();
        out
    }
}

/// tonic reports its own client-side deadline as CANCELLED "Timeout expired"; a gRPC client
/// calls that DEADLINE_EXCEEDED (grpc-core does), so the generator does too.
pub fn status_code(status: &tonic::Status) -> i32 {
    if status.code() == Code::Cancelled && status.message() == "Timeout expired" {
        return DEADLINE_EXCEEDED;
    }
    status.code() as i32
}

/// The `grpc-timeout` header value: at most 8 digits, in the finest unit that fits.
pub fn grpc_timeout(deadline: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = deadline.as_nanos().max(1);
    for (unit, per) in [
        ("n", 1u128),
        ("u", 1_000),
        ("m", 1_000_000),
        ("S", 1_000_000_000),
    ] {
        let value = nanos.div_ceil(per);
        if value <= MAX {
            return format!("{value}{unit}");
        }
    }
    format!("{}M", (nanos.div_ceil(60_000_000_000)).min(MAX))
}

/// Nanoseconds since `t0`.
fn since(t0: Instant) -> u64 {
    t0.elapsed().as_nanos() as u64
}

/// Sleep until `t0 + at_ns`: on the precise timer (or tokio's 1 ms one without it) while far,
/// then spinning through the scheduler (answers keep being handled) for the last `spin_ns`.
async fn wait_until(timer: Option<&PreciseTimer>, t0: Instant, at_ns: u64, spin_ns: u64) {
    let now = since(t0);
    if at_ns <= now {
        return;
    }
    if at_ns - now > spin_ns {
        let wake = t0 + Duration::from_nanos(at_ns - spin_ns);
        let precise = match timer {
            Some(timer) => timer.sleep_until(wake).await.is_ok(),
            None => false,
        };
        if !precise {
            tokio::time::sleep_until(wake.into()).await;
        }
    }
    while since(t0) < at_ns {
        tokio::task::yield_now().await;
    }
}

/// One open-loop request's outcome, written by its task.
struct Slot {
    sent: AtomicU64,
    ended: AtomicU64,
    code: AtomicI32,
}

/// Requests in flight, and a wake-up when none are.
#[derive(Default)]
struct Tracker {
    outstanding: AtomicUsize,
    idle: Notify,
}

impl Tracker {
    fn done(&self) {
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_one();
        }
    }

    async fn wait_idle(&self) {
        while self.outstanding.load(Ordering::Acquire) > 0 {
            self.idle.notified().await;
        }
    }
}

/// Fire request i (deadline class `classes[i]`, or 0 without classes) at `t0 + times[i]`; wait
/// up to `drain` for the last answers.
pub async fn open_loop(
    target: Arc<Target>,
    times: &[u64],
    classes: &[u8],
    t0: Instant,
    spin: Duration,
    drain: Duration,
) -> Records {
    let slots: Arc<Vec<Slot>> = Arc::new(
        times
            .iter()
            .map(|_| Slot {
                sent: AtomicU64::new(0),
                ended: AtomicU64::new(0),
                code: AtomicI32::new(UNFINISHED),
            })
            .collect(),
    );
    let tracker = Arc::new(Tracker::default());
    let spin_ns = spin.as_nanos() as u64;
    let timer = PreciseTimer::new().ok();
    let mut in_a_row = 0;
    for (i, due) in times.iter().enumerate() {
        if since(t0) < *due {
            wait_until(timer.as_ref(), t0, *due, spin_ns).await;
            in_a_row = 0;
        } else {
            in_a_row += 1;
            if in_a_row >= BURST {
                tokio::task::yield_now().await;
                in_a_row = 0;
            }
        }
        tracker.outstanding.fetch_add(1, Ordering::AcqRel);
        let (target, slots, tracker) = (target.clone(), slots.clone(), tracker.clone());
        let class = classes.get(i).map_or(0, |c| *c as usize);
        tokio::spawn(async move {
            let slot = &slots[i];
            slot.sent.store(since(t0), Ordering::Relaxed);
            let code = target.call(i, class).await;
            slot.ended.store(since(t0), Ordering::Relaxed);
            slot.code.store(code, Ordering::Release);
            tracker.done();
        });
    }
    let _ = tokio::time::timeout(drain, tracker.wait_idle()).await;
    let mut records = Records::with_capacity(times.len());
    for (slot, due) in slots.iter().zip(times) {
        let code = slot.code.load(Ordering::Acquire);
        let sent = slot.sent.load(Ordering::Relaxed);
        records.scheduled.push(*due);
        // A task that never started was never sent: it counts as sent (late) at the end.
        records.sent.push(if sent == 0 && *due > 0 {
            since(t0)
        } else {
            sent
        });
        records.ended.push(slot.ended.load(Ordering::Relaxed));
        records.codes.push(code);
    }
    records.classes = classes.to_vec();
    records
}

/// `concurrency` requests always in flight from `t0` until `stop_ns`; then up to `drain`
/// for the last answers. A closed-loop request is scheduled when it is sent.
pub async fn closed_loop(
    target: Arc<Target>,
    concurrency: usize,
    t0: Instant,
    stop_ns: u64,
    drain: Duration,
) -> Records {
    let shards: Vec<Arc<Mutex<Records>>> = (0..concurrency)
        .map(|_| Arc::new(Mutex::new(Records::default())))
        .collect();
    let mut handles = Vec::with_capacity(concurrency);
    for (lane, shard) in shards.iter().enumerate() {
        let (target, shard) = (target.clone(), shard.clone());
        handles.push(tokio::spawn(async move {
            let mut index = lane;
            loop {
                let sent = since(t0);
                if sent >= stop_ns {
                    break;
                }
                push(&shard, sent);
                let code = target.call(index, 0).await;
                finish(&shard, since(t0), code);
                index += concurrency;
            }
        }));
    }
    let stop = t0 + Duration::from_nanos(stop_ns) + drain;
    for handle in handles {
        if tokio::time::timeout_at(stop.into(), handle).await.is_err() {
            break; // the rest stay UNFINISHED
        }
    }
    let mut records = Records::default();
    for shard in shards {
        let mut guard = shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        records.extend(std::mem::take(&mut *guard));
    }
    records
}

fn push(shard: &Mutex<Records>, sent: u64) {
    let mut r = shard
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    r.scheduled.push(sent);
    r.sent.push(sent);
    r.ended.push(0);
    r.codes.push(UNFINISHED);
}

fn finish(shard: &Mutex<Records>, ended: u64, code: i32) {
    let mut guard = shard
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let r = &mut *guard;
    if let (Some(e), Some(c)) = (r.ended.last_mut(), r.codes.last_mut()) {
        *e = ended;
        *c = code;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_uses_at_most_eight_digits() {
        assert_eq!(grpc_timeout(Duration::from_micros(1)), "1000n");
        assert_eq!(grpc_timeout(Duration::from_millis(10)), "10000000n");
        assert_eq!(grpc_timeout(Duration::from_millis(100)), "100000u");
        assert_eq!(grpc_timeout(Duration::from_secs(1000)), "1000000m");
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
        assert_eq!(grpc_timeout(Duration::ZERO), "1n");
    }

    #[test]
    fn tonic_client_timeouts_count_as_deadline_exceeded() {
        assert_eq!(status_code(&tonic::Status::cancelled("Timeout expired")), 4);
        assert_eq!(status_code(&tonic::Status::cancelled("by the server")), 1);
        assert_eq!(status_code(&tonic::Status::resource_exhausted("full")), 8);
    }
}
