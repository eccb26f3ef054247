"""Scheduling: pure logic over an injectable clock, plus the asyncio dispatcher.

Nothing in this package imports grpc or onnxruntime. The dispatcher receives
decoded `InferenceRequest`s from the transport and runs batches through a
`BatchRunner` (implemented by the backend), so the scheduler can be simulated
with a synthetic runner and clock.

- `latency.LatencyModel`: L(b), learned per batch size (profiling sweep at load,
  every execution after), upper-quantile predictions, an operator table.
- `core.SchedulerCore`: per-shape EDF lanes, the `slo` / `fixed` / `none`
  policies, admission control (early refusal, queue bound), expiry,
  cancellation, batch-class pieces. Pure: every call takes `now`.
- `dispatcher.AsyncDispatcher`: the core on the event loop; runs batches inline
  or on executor threads; splits outputs back per request; feeds metrics.
- `factory.make_dispatcher`: what the repository calls per model version.
- `simulator`: a deterministic discrete-event simulator of the core with
  synthetic traces and L(b).
"""
