"""The Open Inference Protocol (KServe V2) messages, gRPC stubs and tensor codec.

The `.proto` files here are the source; `*_pb2*.py` are generated from them by
`python scripts/gen_protos.py` (a test checks they are current). `codec` is the
one place that converts between protobuf tensors and numpy arrays.
"""
