"""The Kairos server: transport (gRPC) -> scheduler (pure logic) -> backend (onnxruntime).

Doors open one way: `transport` knows gRPC and protobuf; `scheduler` knows
neither gRPC nor onnxruntime; `backend` wraps onnxruntime. `metrics` is fed by
the others and feeds nothing.
"""

__version__ = "0.1.0"
