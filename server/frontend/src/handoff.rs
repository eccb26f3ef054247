//! The arrival queue (native -> Python, drained in bulk) and the completion path
//! (Python -> native). Python is woken through an eventfd only when the queue turns
//! non-empty, so a burst of arrivals costs one wake-up and one GIL acquisition.

use crate::decode::Tensor;
use crate::errors::Refusal;
use crate::pb::{ModelInferResponse, ModelStreamInferResponse};
use crate::validate::Signature;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Notify};
use tonic::Status;

/// A ready model version, as the front end needs it.
#[derive(Debug)]
pub struct VersionEntry {
    pub version: String,
    pub signature: Signature,
    pub slo_s: Option<f64>,
    /// L(1) in seconds as f64 bits: less time left than this cannot be served.
    pub min_service_bits: AtomicU64,
    /// The scheduler's predicted wait for a new 1-row online request (seconds), valid
    /// for requests whose deadline is no earlier than `tail_deadline` (they queue last).
    pub queue_delay_bits: AtomicU64,
    pub tail_deadline_bits: AtomicU64,
}

impl VersionEntry {
    pub fn new(version: String, signature: Signature, slo_s: Option<f64>) -> Self {
        VersionEntry {
            version,
            signature,
            slo_s,
            min_service_bits: AtomicU64::new(0f64.to_bits()),
            queue_delay_bits: AtomicU64::new(0f64.to_bits()),
            tail_deadline_bits: AtomicU64::new(f64::INFINITY.to_bits()),
        }
    }

    pub fn min_service_s(&self) -> f64 {
        f64::from_bits(self.min_service_bits.load(Ordering::Relaxed))
    }

    /// The queue this request would join cannot finish it by `deadline`: as the
    /// scheduler's admission would judge it, from its last published state.
    pub fn queue_too_long(&self, now: f64, deadline: f64) -> Option<f64> {
        let delay = f64::from_bits(self.queue_delay_bits.load(Ordering::Relaxed));
        let tail = f64::from_bits(self.tail_deadline_bits.load(Ordering::Relaxed));
        (delay > 0.0 && deadline >= tail && now + delay > deadline).then_some(delay)
    }

    /// Publish the scheduler's state: (L(1), predicted delay, tail deadline).
    pub fn set_state(&self, min_service_s: f64, queue_delay_s: f64, tail_deadline: f64) {
        self.min_service_bits
            .store(min_service_s.to_bits(), Ordering::Relaxed);
        self.queue_delay_bits
            .store(queue_delay_s.to_bits(), Ordering::Relaxed);
        self.tail_deadline_bits
            .store(tail_deadline.to_bits(), Ordering::Relaxed);
    }
}

/// Everything the front end knows of one model name.
#[derive(Debug, Default)]
pub struct ModelEntry {
    pub versions: HashMap<String, Arc<VersionEntry>>,
    pub latest: Option<String>,
    /// Versions that failed to load, with the reason.
    pub failed: HashMap<String, String>,
    /// Why no version is served (when `latest` is None).
    pub reason: String,
}

#[derive(Debug)]
pub struct InferArrival {
    pub rid: u64,
    pub model: String,
    pub requested_version: String,
    pub version: String,
    pub inputs: Vec<Tensor>,
    pub outputs: Option<Vec<String>>,
    pub rows: i64,
    pub batching: bool,
    pub arrival: f64,
    pub deadline: f64,
    pub priority: i64,
    pub batch_class: bool,
    pub min_accuracy: f64,
    pub request_id: String,
}

#[derive(Debug)]
pub struct CallArrival {
    pub rid: u64,
    pub method: &'static str,
    pub payload: Vec<u8>,
}

pub type InferReply = Result<ModelInferResponse, Refusal>;
pub type StreamSender = mpsc::Sender<Result<ModelStreamInferResponse, Status>>;

pub struct StreamTarget {
    pub tx: StreamSender,
    pub model: String,
    pub version: String,
    pub id: String,
    pub state: Arc<StreamState>,
}

pub struct UnaryTarget {
    pub tx: oneshot::Sender<InferReply>,
    pub model: String,
    pub version: String,
    pub id: String,
}

pub enum Waiter {
    Unary(UnaryTarget),
    Stream(StreamTarget),
    Call(oneshot::Sender<Result<Vec<u8>, Status>>),
}

/// One open ModelStreamInfer call: requests read and not yet answered.
#[derive(Default)]
pub struct StreamState {
    pub pending: AtomicUsize,
    pub answered: Notify,
}

impl StreamState {
    /// Wait until `ready()` holds: woken by each answer, and every millisecond in case
    /// the client is what frees room (by reading responses).
    pub async fn wait_until(&self, ready: impl Fn() -> bool) {
        while !ready() {
            tokio::select! {
                _ = self.answered.notified() => {}
                _ = tokio::time::sleep(std::time::Duration::from_millis(1)) => {}
            }
        }
    }
}

#[derive(Default)]
struct Queued {
    infers: Vec<InferArrival>,
    calls: Vec<CallArrival>,
}

/// Refusals made natively, by (model label, version, reason, class), since the last take.
pub type RefusalCounts = HashMap<(String, String, &'static str, bool), u64>;

pub struct Shared {
    pub models: RwLock<HashMap<String, ModelEntry>>,
    queue: Mutex<Queued>,
    pub waiters: Mutex<HashMap<u64, Waiter>>,
    next_rid: AtomicU64,
    notified: AtomicBool,
    eventfd: libc::c_int,
    pub draining: AtomicBool,
    pub ready: AtomicBool,
    /// The start-up load is done (set with the first `ready`, never cleared). Until
    /// then the table may not list a model that is on its way, so a name it does not
    /// know is UNAVAILABLE (retry elsewhere, or later), not NOT_FOUND.
    pub started: AtomicBool,
    pub refusals: Mutex<RefusalCounts>,
    pub open_streams: AtomicUsize,
    pub closing_streams: AtomicBool,
    pub streams_closed: Notify,
    pub in_flight_infers: AtomicUsize,
    /// CLOCK_MONOTONIC (f64 bits) when the oldest arrival Python has not taken came.
    pending_since_bits: AtomicU64,
}

impl Shared {
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: plain syscall; the descriptor is owned by Shared and closed in Drop.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Shared {
            models: RwLock::new(HashMap::new()),
            queue: Mutex::new(Queued::default()),
            waiters: Mutex::new(HashMap::new()),
            next_rid: AtomicU64::new(1),
            notified: AtomicBool::new(false),
            eventfd: fd,
            draining: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            started: AtomicBool::new(false),
            refusals: Mutex::new(HashMap::new()),
            open_streams: AtomicUsize::new(0),
            closing_streams: AtomicBool::new(false),
            streams_closed: Notify::new(),
            in_flight_infers: AtomicUsize::new(0),
            pending_since_bits: AtomicU64::new(0f64.to_bits()),
        })
    }

    pub fn eventfd(&self) -> libc::c_int {
        self.eventfd
    }

    pub fn next_rid(&self) -> u64 {
        self.next_rid.fetch_add(1, Ordering::Relaxed)
    }

    fn wake(&self) {
        if !self.notified.swap(true, Ordering::SeqCst) {
            self.pending_since_bits
                .store(crate::admit::monotonic().to_bits(), Ordering::Relaxed);
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a u64 we own to our eventfd.
            unsafe { libc::write(self.eventfd, (&one as *const u64).cast(), 8) };
        }
    }

    pub fn push_infer(&self, arrival: InferArrival, waiter: Waiter) {
        self.in_flight_infers.fetch_add(1, Ordering::AcqRel);
        self.waiters.lock().insert(arrival.rid, waiter);
        self.queue.lock().infers.push(arrival);
        self.wake();
    }

    pub fn push_call(&self, call: CallArrival, waiter: oneshot::Sender<Result<Vec<u8>, Status>>) {
        self.waiters.lock().insert(call.rid, Waiter::Call(waiter));
        self.queue.lock().calls.push(call);
        self.wake();
    }

    /// Everything queued since the last take. Order matters: consume the eventfd, then
    /// clear the flag, then drain. An arrival whose flag swap comes before the clear is
    /// in the queue before the drain; one whose swap comes after sees the flag clear and
    /// writes the eventfd again. (Clearing before consuming could swallow the write of
    /// an arrival that set the flag, leaving it set with nobody woken: a lost wake-up.)
    pub fn take(&self) -> (Vec<InferArrival>, Vec<CallArrival>) {
        let mut counter: u64 = 0;
        // SAFETY: reads 8 bytes into a u64 we own; EAGAIN (nothing pending) is fine.
        unsafe { libc::read(self.eventfd, (&mut counter as *mut u64).cast(), 8) };
        self.notified.store(false, Ordering::SeqCst);
        let mut queue = self.queue.lock();
        (
            std::mem::take(&mut queue.infers),
            std::mem::take(&mut queue.calls),
        )
    }

    pub fn waiter(&self, rid: u64) -> Option<Waiter> {
        let waiter = self.waiters.lock().remove(&rid);
        if matches!(waiter, Some(Waiter::Unary(_)) | Some(Waiter::Stream(_))) {
            self.in_flight_infers.fetch_sub(1, Ordering::AcqRel);
        }
        waiter
    }

    /// How long arrivals have waited for Python to take them (0 when none waits): a
    /// request arriving now waits at least this long before the scheduler sees it.
    pub fn python_lag(&self, now: f64) -> f64 {
        if !self.notified.load(Ordering::Acquire) {
            return 0.0;
        }
        (now - f64::from_bits(self.pending_since_bits.load(Ordering::Relaxed))).max(0.0)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight_infers.load(Ordering::Acquire)
    }

    /// Count a refusal made before Python (model label is "" for unknown names, so a
    /// client cannot grow the metrics without bound).
    pub fn count_refusal(&self, model: &str, version: &str, reason: &'static str, batch: bool) {
        *self
            .refusals
            .lock()
            .entry((model.to_string(), version.to_string(), reason, batch))
            .or_insert(0) += 1;
    }

    pub fn take_refusals(&self) -> RefusalCounts {
        std::mem::take(&mut *self.refusals.lock())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: closes the descriptor this struct opened.
        unsafe { libc::close(self.eventfd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(rid: u64) -> InferArrival {
        InferArrival {
            rid,
            model: "m".into(),
            requested_version: String::new(),
            version: "1".into(),
            inputs: Vec::new(),
            outputs: None,
            rows: 1,
            batching: true,
            arrival: 0.0,
            deadline: 1.0,
            priority: 0,
            batch_class: false,
            min_accuracy: 0.0,
            request_id: String::new(),
        }
    }

    fn readable(fd: libc::c_int) -> bool {
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one descriptor we own, without waiting.
        unsafe { libc::poll(&mut poll, 1, 0) == 1 }
    }

    #[test]
    fn every_arrival_is_taken_or_leaves_the_eventfd_readable() {
        // Producers race with a consumer; whenever the consumer finds the eventfd not
        // readable, nothing may be left in the queue (a lost wake-up would hang Python).
        // The race window is narrow: several rounds.
        for _ in 0..10 {
            race_producers_against_a_consumer();
        }
    }

    fn race_producers_against_a_consumer() {
        let shared = Arc::new(Shared::new().expect("eventfd"));
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        let rid = p * 1_000_000 + i;
                        let (tx, _rx) = oneshot::channel();
                        let target = UnaryTarget {
                            tx,
                            model: String::new(),
                            version: String::new(),
                            id: String::new(),
                        };
                        shared.push_infer(arrival(rid), Waiter::Unary(target));
                    }
                })
            })
            .collect();
        let mut taken = 0usize;
        loop {
            // Finished first, then readable: once every producer is done no write can
            // come, so an unreadable eventfd must mean an empty queue.
            let done = producers.iter().all(|p| p.is_finished());
            if readable(shared.eventfd()) {
                taken += shared.take().0.len();
            } else if done {
                let left = shared.take().0.len();
                assert_eq!(left, 0, "{left} arrivals queued with no wake-up pending");
                break;
            }
        }
        for p in producers {
            p.join().expect("producer");
        }
        assert_eq!(taken, 80_000);
    }
}
