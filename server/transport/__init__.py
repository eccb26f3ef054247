"""gRPC transport: the only layer that knows gRPC and protobuf."""
