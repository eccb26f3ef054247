"""Helpers for the reliability and security tests: slow and failing models, and
certificates made at test time."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .models import OPSET


def mlp(width: int = 256, depth: int = 2, seed: int = 0, name: str = "mlp") -> onnx.ModelProto:
    """input [batch, width] FP32 -> output [batch, width]: `depth` MatMul+Relu layers.
    Wide and deep enough, it takes milliseconds per batch: a slow model to keep
    requests in flight and queued."""
    rng = np.random.default_rng(seed)
    nodes, inits, current = [], [], "input"
    for layer in range(depth):
        weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{layer}"))
        out = "output" if layer == depth - 1 else f"h{layer}"
        nodes.append(helper.make_node("MatMul", [current, f"w{layer}"], [f"m{layer}"]))
        nodes.append(helper.make_node("Relu", [f"m{layer}"], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def mlp_reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """What `mlp` computes, in numpy (to check answers across a reload)."""
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for layer in range(len(weights)):
        x = np.maximum(x @ weights[f"w{layer}"], 0)
    return x


TABLE_ROWS = 10


def gather_table(work: int = 0) -> onnx.ModelProto:
    """indices [batch, 1] INT64 -> output [batch, 1, 4] FP32 rows of a 10-row table.
    An index outside [-10, 10) passes every up-front check (right datatype and
    shape) but makes onnxruntime fail at run time: a model that errors for some
    input values. With `work` > 0 each row also costs `work` floats written and
    summed (about 2 ms per million on this box), so requests queue behind a running batch;
    the outputs stay the same."""
    table = np.arange(TABLE_ROWS * 4, dtype=np.float32).reshape(TABLE_ROWS, 4)
    nodes = [helper.make_node("Gather", ["table", "indices"], ["rows" if work else "output"], axis=0)]
    inits = [numpy_helper.from_array(table, "table")]
    if work:
        inits += [
            numpy_helper.from_array(np.array([1, work], np.int64), "work_shape"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array([2], np.int64), "axis2"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ]
        nodes += [
            helper.make_node("Cast", ["indices"], ["as_float"], to=TensorProto.FLOAT),
            helper.make_node("Expand", ["as_float", "work_shape"], ["spread"]),
            helper.make_node("ReduceSum", ["spread", "axis1"], ["summed"], keepdims=1),
            helper.make_node("Mul", ["summed", "zero"], ["nothing"]),
            helper.make_node("Unsqueeze", ["nothing", "axis2"], ["nothing3"]),
            helper.make_node("Add", ["rows", "nothing3"], ["output"]),
        ]
    graph = helper.make_graph(
        nodes,
        "gather_table",
        [helper.make_tensor_value_info("indices", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save_atomically(model: onnx.ModelProto, path: Path) -> None:
    """Write a model so a reader sees either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    onnx.save(model, temporary)
    os.replace(temporary, path)


def read_rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc (no psutil needed)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# ---- certificates ------------------------------------------------------------------------


@dataclass
class Pki:
    """A CA, a server certificate for 127.0.0.1/localhost, and a client certificate (PEM files)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path  # a CA the server does not trust
    other_client_cert: Path
    other_client_key: Path

    def read(self, name: str) -> bytes:
        return getattr(self, name).read_bytes()


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject, key, issuer, issuer_key, *, ca: bool, server: bool = False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, stem: str, cert, key) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def make_pki(folder: Path) -> Pki:
    """Generate every certificate the TLS tests need into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, other_key = _key(), _key()
    ca = _certificate(_name("Kairos test CA"), ca_key, _name("Kairos test CA"), ca_key, ca=True)
    other = _certificate(_name("Untrusted CA"), other_key, _name("Untrusted CA"), other_key, ca=True)
    server_key, client_key, stranger_key = _key(), _key(), _key()
    server = _certificate(_name("localhost"), server_key, ca.subject, ca_key, ca=False, server=True)
    client = _certificate(_name("kairos-client"), client_key, ca.subject, ca_key, ca=False)
    stranger = _certificate(_name("stranger"), stranger_key, other.subject, other_key, ca=False)
    ca_path, _ = _write(folder, "ca", ca, ca_key)
    other_path, _ = _write(folder, "other-ca", other, other_key)
    server_paths = _write(folder, "server", server, server_key)
    client_paths = _write(folder, "client", client, client_key)
    stranger_paths = _write(folder, "stranger", stranger, stranger_key)
    return Pki(ca_path, *server_paths, *client_paths, other_path, *stranger_paths)
