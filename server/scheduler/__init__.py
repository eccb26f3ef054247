"""Scheduling: pure logic over an injectable clock, plus the asyncio dispatcher.

Nothing in this package imports grpc or onnxruntime. The dispatcher receives
decoded `InferenceRequest`s from the transport and runs batches through a
`BatchRunner` (implemented by the backend), so the scheduler can be simulated
with a synthetic runner and clock.
"""
