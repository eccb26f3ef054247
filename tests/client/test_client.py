"""The client library against a minimal third-party-style V2 server (see conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import numpy as np
import pytest
from kairos.client import AsyncInferenceClient, InferenceClient, InferenceServerError


def _inputs() -> dict[str, np.ndarray]:
    return {
        "x": np.arange(6, dtype=np.float32).reshape(3, 2),
        "ids": np.array([1, -2, 3], dtype=np.int64),
        "flags": np.array([True, False, True]),
        "text": np.array([b"a", b"", "h\u00e9".encode()], dtype=np.object_),
    }


def _assert_identity(outputs: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> None:
    assert set(outputs) == {f"{name}_out" for name in inputs}
    for name, array in inputs.items():
        got = outputs[f"{name}_out"]
        assert got.dtype == array.dtype
        assert got.shape == array.shape
        assert got.tolist() == array.tolist()


@pytest.mark.parametrize("typed", [False, True], ids=["raw_output_contents", "typed_contents"])
def test_infer_decodes_raw_and_typed_outputs(fake_server, typed):
    fake_server.state.typed_outputs = typed
    with InferenceClient(fake_server.address) as client:
        _assert_identity(client.infer("identity", _inputs()), _inputs())


def test_infer_response_echoes_id_version_and_parameters(fake_server):
    with InferenceClient(f"grpc://{fake_server.address}/") as client:
        result = client.infer_response(
            "identity", {"x": np.ones((1, 2), np.float32)}, request_id="req-7", version="1"
        )
    assert (result.id, result.model_name, result.model_version) == ("req-7", "identity", "1")
    assert result.parameters == {"served_by": "fake"}
    assert result.response.raw_output_contents


def test_requested_output_subset(fake_server):
    with InferenceClient(fake_server.address) as client:
        outputs = client.infer("identity", _inputs(), outputs=["ids_out"])
    assert list(outputs) == ["ids_out"]


def test_errors_carry_status_and_server_message(fake_server):
    with InferenceClient(fake_server.address) as client:
        with pytest.raises(InferenceServerError) as missing:
            client.infer("nope", {"x": np.ones(1, np.float32)})
        assert missing.value.status == "NOT_FOUND"
        assert missing.value.code == grpc.StatusCode.NOT_FOUND
        assert "model 'nope'" in missing.value.message
        assert not missing.value.unreachable

        with pytest.raises(InferenceServerError) as bad:
            client.infer("identity", {"x": np.ones(1, np.float32)}, parameters={"fail": True})
        assert bad.value.status == "INVALID_ARGUMENT"
        assert "input 'x'" in str(bad.value)

        with pytest.raises(InferenceServerError) as unavailable:
            client.infer("broken", {"x": np.ones(1, np.float32)})
        assert unavailable.value.status == "UNAVAILABLE"
        assert not unavailable.value.unreachable  # the server answered


def test_unreachable_server_is_flagged(free_port):
    with InferenceClient(f"127.0.0.1:{free_port}") as client, pytest.raises(
        InferenceServerError
    ) as error:
        client.server_live(timeout=5)
    assert error.value.status == "UNAVAILABLE"
    assert error.value.unreachable


def test_timeout_becomes_grpc_deadline(fake_server):
    with InferenceClient(fake_server.address) as client, pytest.raises(
        InferenceServerError
    ) as error:
        client.infer(
            "identity", {"x": np.ones(1, np.float32)}, timeout=0.05, parameters={"sleep_ms": 500}
        )
    assert error.value.status == "DEADLINE_EXCEEDED"


def test_bearer_token_and_headers_are_sent(fake_server):
    with InferenceClient(fake_server.address, token="s3cret", headers={"X-Team": "a"}) as client:
        assert client.server_live()
    seen = fake_server.state.seen_metadata[-1]
    assert seen["authorization"] == "Bearer s3cret"
    assert seen["x-team"] == "a"


def test_grpcs_scheme_means_tls(fake_server):
    with InferenceClient(f"grpcs://{fake_server.address}") as client, pytest.raises(
        InferenceServerError
    ):
        client.server_live(timeout=5)  # a TLS handshake with a plaintext server fails


def test_client_cert_needs_key():
    with pytest.raises(ValueError, match="together"):
        InferenceClient("127.0.0.1:1", ssl_client_cert=b"cert")


def test_max_message_size_is_enforced_client_side(fake_server):
    big = {"x": np.zeros((300_000, 2), np.float32)}  # 2.4 MB
    with InferenceClient(fake_server.address, max_message_mb=1) as client, pytest.raises(
        InferenceServerError
    ) as error:
        client.infer("identity", big)
    assert error.value.status == "RESOURCE_EXHAUSTED"
    with InferenceClient(fake_server.address, max_message_mb=8) as client:
        assert client.infer("identity", big)["x_out"].shape == (300_000, 2)


def test_metadata_config_statistics_and_repository(fake_server):
    with InferenceClient(fake_server.address) as client:
        assert client.server_live() and client.server_ready()
        assert client.server_metadata().extensions == ["statistics"]
        assert client.model_ready("identity") and not client.model_ready("broken")
        metadata = client.model_metadata("identity")
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs][0] == (
            "x",
            "FP32",
            [-1, 2],
        )
        config = client.model_config("identity")
        assert config.max_batch_size == 8
        assert config.parameters["kairos.scheduler"].string_value
        assert client.model_statistics("identity").model_stats[0].inference_count == 3

        index = {m.name: m for m in client.repository_index()}
        assert index["broken"].state == "UNAVAILABLE" and "corrupt" in index["broken"].reason
        assert [m.name for m in client.repository_index(ready=True)] == ["identity"]

        client.unload_model("identity")
        assert not client.model_ready("identity")
        client.load_model("identity")
        assert client.model_ready("identity")
        with pytest.raises(InferenceServerError, match="protobuf parsing failed"):
            client.load_model("broken")
        client.wait_until_ready(5, models=["identity"])
        with pytest.raises(InferenceServerError, match="not ready"):
            client.wait_until_ready(0.2, models=["broken"])


def test_stream_infer_in_order_and_ends_on_half_close(fake_server):
    requests = [{"x": np.full((1, 2), i, np.float32)} for i in range(200)]
    with InferenceClient(fake_server.address) as client:
        results = list(client.stream_infer("identity", iter(requests), max_in_flight=8))
    assert [r["x_out"][0, 0] for r in results] == list(range(200))
    assert fake_server.state.stream_events == ["open", "half-closed"]


def test_stream_per_request_errors(fake_server):
    def requests():
        yield {"x": np.ones((1, 2), np.float32)}
        yield {"x": np.ones((1, 2), np.float32)}

    with InferenceClient(fake_server.address) as client:
        outcomes = list(client.stream_infer_responses("identity", requests(), outputs=["nope"]))
        assert all(isinstance(o, InferenceServerError) for o in outcomes)
        assert "unknown output 'nope'" in str(outcomes[0])

        with pytest.raises(InferenceServerError, match="not found"):
            list(client.stream_infer("missing", requests()))


def test_stream_input_iterator_failure_reaches_caller(fake_server):
    def requests():
        yield {"x": np.ones((1, 2), np.float32)}
        raise RuntimeError("dataset file vanished")

    with InferenceClient(fake_server.address) as client:
        stream = client.stream_infer("identity", requests())
        with pytest.raises(RuntimeError, match="vanished"):
            list(stream)


def test_stream_consumer_may_stop_early(fake_server):
    endless = ({"x": np.full((1, 2), i, np.float32)} for i in range(10**9))
    with InferenceClient(fake_server.address) as client:
        stream = client.stream_infer("identity", endless, max_in_flight=4)
        firsts = [next(stream)["x_out"][0, 0] for _ in range(5)]
        stream.close()
        assert firsts == [0, 1, 2, 3, 4]
        assert client.server_live()  # the channel still works


@pytest.mark.parametrize("mode", ["swap_pairs", "no_ids"])
def test_stream_results_come_back_in_request_order(fake_server, mode):
    fake_server.state.stream_mode = mode
    requests = [{"x": np.full((1, 2), i, np.float32)} for i in range(101)]
    with InferenceClient(fake_server.address) as client:
        results = list(client.stream_infer("identity", requests, max_in_flight=8))
    assert [r["x_out"][0, 0] for r in results] == list(range(101))


def test_stream_error_keeps_the_status_name(fake_server):
    with InferenceClient(fake_server.address) as client:
        (outcome,) = client.stream_infer_responses("missing", [{"x": np.ones(1, np.float32)}])
    assert isinstance(outcome, InferenceServerError)
    assert outcome.status == "NOT_FOUND" and outcome.message == "model 'missing' not found"


def test_stream_timeout_bounds_the_whole_stream(fake_server):
    slow = ({"x": np.ones((1, 2), np.float32)} for _ in range(50))
    with InferenceClient(fake_server.address) as client, pytest.raises(
        InferenceServerError
    ) as error:
        list(client.stream_infer("identity", slow, timeout=0.3, parameters={"sleep_ms": 50}))
    assert error.value.status == "DEADLINE_EXCEEDED"


# -- asyncio -------------------------------------------------------------------------------


@pytest.mark.parametrize("typed", [False, True], ids=["raw_output_contents", "typed_contents"])
def test_async_infer_and_metadata(fake_server, typed):
    fake_server.state.typed_outputs = typed

    async def scenario():
        async with AsyncInferenceClient(fake_server.address, token="t") as client:
            assert await client.server_live() and await client.server_ready()
            assert await client.model_ready("identity")
            assert (await client.model_metadata("identity")).outputs[0].name == "x_out"
            assert (await client.model_config("identity")).max_batch_size == 8
            assert (await client.model_statistics()).model_stats
            assert (await client.server_metadata()).name == "fake"
            assert len(await client.repository_index()) == 2
            await client.unload_model("identity")
            await client.load_model("identity")
            await client.wait_until_ready(5, models=["identity"])
            outputs = await client.infer("identity", _inputs())
            result = await client.infer_response("identity", _inputs(), request_id="a1")
            return outputs, result

    outputs, result = asyncio.run(scenario())
    _assert_identity(outputs, _inputs())
    assert result.id == "a1"
    assert fake_server.state.seen_metadata[-1]["authorization"] == "Bearer t"


def test_async_errors(fake_server, free_port):
    async def scenario():
        async with AsyncInferenceClient(fake_server.address) as client:
            with pytest.raises(InferenceServerError) as missing:
                await client.infer("nope", {"x": np.ones(1, np.float32)})
            assert missing.value.status == "NOT_FOUND"
            with pytest.raises(InferenceServerError) as late:
                await client.infer(
                    "identity", {"x": np.ones(1, np.float32)}, timeout=0.05,
                    parameters={"sleep_ms": 500},
                )
            assert late.value.status == "DEADLINE_EXCEEDED"
        async with AsyncInferenceClient(f"127.0.0.1:{free_port}") as client:
            with pytest.raises(InferenceServerError) as refused:
                await client.server_live(timeout=5)
            assert refused.value.unreachable

    asyncio.run(scenario())


def test_async_stream_from_sync_and_async_iterables(fake_server):
    async def produce(n):
        for i in range(n):
            yield {"x": np.full((1, 2), i, np.float32)}

    async def scenario():
        async with AsyncInferenceClient(fake_server.address) as client:
            from_async = [
                r["x_out"][0, 0]
                async for r in client.stream_infer("identity", produce(100), max_in_flight=4)
            ]
            plain = [{"x": np.full((1, 2), i, np.float32)} for i in range(3)]
            from_sync = [r["x_out"][0, 0] async for r in client.stream_infer("identity", plain)]
            outcomes = [
                o async for o in client.stream_infer_responses("missing", plain)
            ]
            return from_async, from_sync, outcomes

    from_async, from_sync, outcomes = asyncio.run(scenario())
    assert from_async == list(range(100))
    assert from_sync == [0, 1, 2]
    assert all(isinstance(o, InferenceServerError) for o in outcomes) and len(outcomes) == 3
    assert fake_server.state.stream_events == ["open", "half-closed"] * 3


def test_async_stream_reorders_and_may_stop_early(fake_server):
    fake_server.state.stream_mode = "swap_pairs"

    async def scenario():
        async with AsyncInferenceClient(fake_server.address) as client:
            rows = [{"x": np.full((1, 2), i, np.float32)} for i in range(21)]
            ordered = [r["x_out"][0, 0] async for r in client.stream_infer("identity", rows)]
            endless = ({"x": np.full((1, 2), i, np.float32)} for i in range(10**9))
            firsts = []
            async with contextlib.aclosing(
                client.stream_infer("identity", endless, max_in_flight=4)
            ) as stream:
                async for result in stream:
                    firsts.append(result["x_out"][0, 0])
                    if len(firsts) == 5:
                        break
            return ordered, firsts, await client.server_live()

    ordered, firsts, live = asyncio.run(scenario())
    assert ordered == list(range(21))
    assert firsts == [0, 1, 2, 3, 4] and live


def test_async_stream_input_failure_reaches_caller(fake_server):
    async def produce():
        yield {"x": np.ones((1, 2), np.float32)}
        raise RuntimeError("dataset file vanished")

    async def scenario():
        async with AsyncInferenceClient(fake_server.address) as client:
            return [r async for r in client.stream_infer("identity", produce())]

    with pytest.raises(RuntimeError, match="vanished"):
        asyncio.run(scenario())


# -- against a real Kairos server ----------------------------------------------------------

KAIROS_CASES = {
    "identity_fp32": np.arange(8, dtype=np.float32).reshape(2, 4) / 3,
    "identity_fp16": np.arange(8, dtype=np.float16).reshape(2, 4) / 3,
    "identity_fp64": np.arange(8, dtype=np.float64).reshape(2, 4) / 3,
    "identity_int64": np.array([[1, -2, 3, 2**40]], dtype=np.int64),
    "identity_uint8": np.array([[0, 1, 254, 255]], dtype=np.uint8),
    "identity_bytes": np.array([[b"hello", "w\u00f6rld".encode()]], dtype=np.object_),
}


@pytest.mark.parametrize("model", sorted(KAIROS_CASES))
def test_kairos_infer_datatypes(kairos_server, model):
    data = KAIROS_CASES[model]
    with InferenceClient(kairos_server.address) as client:
        result = client.infer_response(model, {"input": data}, request_id=f"id-{model}")
    assert result.id == f"id-{model}" and result.model_version == "1"
    output = result.outputs["output"]
    assert output.dtype == data.dtype and output.tolist() == data.tolist()


def test_kairos_multi_output_subset_and_bool(kairos_server):
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), np.float32)
    with InferenceClient(kairos_server.address) as client:
        both = client.infer("add_sub", {"a": a, "b": b})
        only = client.infer("add_sub", {"a": a, "b": b}, outputs=["difference"])
        flags = client.infer("not_bool", {"input": np.array([[True, False, True]])})["output"]
        cast = client.infer("cast_int64_fp32", {"input": np.array([[1, 2, 3]], np.int64)})
    np.testing.assert_array_equal(both["sum"], a + b)
    np.testing.assert_array_equal(both["difference"], a - b)
    assert list(only) == ["difference"]
    assert flags.tolist() == [[False, True, False]]
    assert cast["output"].dtype == np.float32 and cast["output"].tolist() == [[1, 2, 3]]


def test_kairos_errors_are_readable(kairos_server):
    with InferenceClient(kairos_server.address) as client:
        with pytest.raises(InferenceServerError) as missing:
            client.infer("no_such_model", {"input": np.ones((1, 4), np.float32)})
        assert missing.value.status == "NOT_FOUND"
        with pytest.raises(InferenceServerError) as wrong:
            client.infer("identity_fp32", {"input": np.ones((1, 4), np.int64)})
        assert wrong.value.status == "INVALID_ARGUMENT" and "input" in wrong.value.message
        with pytest.raises(InferenceServerError) as broken:
            client.infer("broken", {"input": np.ones((1, 4), np.float32)})
        assert broken.value.status == "UNAVAILABLE" and not broken.value.unreachable
        index = {m.name: m for m in client.repository_index()}
        assert index["broken"].state == "UNAVAILABLE" and index["broken"].reason
        assert index["identity_fp32"].state == "READY"


def test_kairos_metadata_config_statistics(kairos_server):
    with InferenceClient(kairos_server.address) as client:
        assert client.server_live() and client.server_ready()
        assert client.server_metadata().name
        metadata = client.model_metadata("add_sub")
        assert [t.name for t in metadata.inputs] == ["a", "b"]
        assert list(metadata.inputs[0].shape) == [-1, 4]
        config = client.model_config("add_sub")
        assert config.max_batch_size > 0 and list(config.input[0].dims) == [4]
        before = client.model_statistics("identity_fp32").model_stats[0].inference_count
        client.infer("identity_fp32", {"input": np.ones((3, 4), np.float32)})
        after = client.model_statistics("identity_fp32").model_stats[0].inference_count
        assert after > before


def test_kairos_unload_and_load(kairos_server):
    with InferenceClient(kairos_server.address) as client:
        client.unload_model("identity_uint8")
        try:
            assert not client.model_ready("identity_uint8")
            with pytest.raises(InferenceServerError):
                client.infer("identity_uint8", {"input": np.ones((1, 4), np.uint8)})
        finally:
            client.load_model("identity_uint8")
        assert client.model_ready("identity_uint8")


def test_kairos_streaming_sync_and_async(kairos_server):
    rows = [{"input": np.full((1, 4), i, np.float32)} for i in range(50)]
    with InferenceClient(kairos_server.address) as client:
        synced = [r["output"][0, 0] for r in client.stream_infer("identity_fp32", rows)]
        outcomes = list(client.stream_infer_responses("no_such_model", rows[:2]))

    async def scenario():
        async with AsyncInferenceClient(kairos_server.address) as client:
            got = [r["output"][0, 0] async for r in client.stream_infer("identity_fp32", rows)]
            single = await client.infer("identity_fp32", rows[3])
            return got, single

    streamed, single = asyncio.run(scenario())
    assert synced == list(range(50)) and streamed == list(range(50))
    assert single["output"][0, 0] == 3
    assert len(outcomes) == 2 and all(isinstance(o, InferenceServerError) for o in outcomes)


# -- TLS and mutual TLS ----------------------------------------------------------------------


def _certificates(folder):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def issue(name, issuer_name, issuer_key, *, ca=False, ip=None):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ip:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                critical=False,
            )
        cert = builder.sign(issuer_key or key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return key, cert.public_bytes(serialization.Encoding.PEM), key_pem

    ca_key, ca_pem, _ = issue("test-ca", "test-ca", None, ca=True)
    _, server_pem, server_key = issue("server", "test-ca", ca_key, ip="127.0.0.1")
    _, client_pem, client_key = issue("client", "test-ca", ca_key)
    paths = {}
    for name, data in {
        "ca.pem": ca_pem, "server.pem": server_pem, "server.key": server_key,
        "client.pem": client_pem, "client.key": client_key,
    }.items():  # fmt: skip
        (folder / name).write_bytes(data)
        paths[name] = folder / name
    return paths


def test_mutual_tls_with_certificate_files(tmp_path, fake_server_factory):
    certs = _certificates(tmp_path)
    credentials = grpc.ssl_server_credentials(
        [(certs["server.key"].read_bytes(), certs["server.pem"].read_bytes())],
        root_certificates=certs["ca.pem"].read_bytes(),
        require_client_auth=True,
    )
    with fake_server_factory(credentials) as server:
        address = server.address
        with InferenceClient(
            address,
            ssl_root_cert=certs["ca.pem"],
            ssl_client_cert=str(certs["client.pem"]),
            ssl_client_key=certs["client.key"].read_bytes(),
            token="t",
        ) as client:
            assert client.infer("identity", {"x": np.ones((1, 2), np.float32)})["x_out"].sum() == 2
        no_client_cert = InferenceClient(address, ssl_root_cert=certs["ca.pem"])
        with no_client_cert, pytest.raises(InferenceServerError):
            no_client_cert.server_live(timeout=5)
        with InferenceClient(address) as plaintext, pytest.raises(InferenceServerError):
            plaintext.server_live(timeout=5)
