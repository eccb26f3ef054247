"""Helpers for Kairos's tests: ONNX model builders and a real server process.

This package must not import Kairos's generated stubs at module level: tests
that use tritonclient import it too, and the two define the same protobuf
symbols (see DESIGN.md, "Protobuf descriptor pool").
"""
