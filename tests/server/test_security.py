"""TLS, mutual TLS, bearer-token authentication and repository confinement, against
real server processes. Certificates are generated at test time."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kairos.protos import codec
from kairos.protos import grpc_service_pb2 as pb
from kairos.protos import grpc_service_pb2_grpc as pb_grpc
from kairos.server.security import (
    BearerTokenInterceptor,
    SecurityConfigError,
    load_tokens,
    parse_tokens,
)
from kairos_testing.models import identity, write_model
from kairos_testing.reliability import make_pki
from kairos_testing.server import running_server

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
TOKENS = ("s3cret-token-one", "s3cret-token-two")
ENV_TOKEN = "token-from-env"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("repo")
    write_model(folder, "identity_fp32", identity())
    return folder


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def infer(stub, **kwargs) -> np.ndarray:
    request = codec.build_request("identity_fp32", {"input": np.ones((1, 4), np.float32)})
    reply = stub.ModelInfer(request, timeout=10, **kwargs)
    return codec.decode_response_outputs(reply)["output"]


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(*args, timeout=10, **kwargs)
    return error.value


# ---- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(repo, pki):
    credentials = grpc.ssl_channel_credentials(pki.read("ca_cert"))
    args = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    with running_server(repo, *args, credentials=credentials) as server:
        yield server


def test_tls_client_is_served(tls_server, pki):
    with grpc.secure_channel(tls_server.address, grpc.ssl_channel_credentials(pki.read("ca_cert"))) as channel:
        np.testing.assert_array_equal(infer(pb_grpc.GRPCInferenceServiceStub(channel)), np.ones((1, 4)))


def test_plain_text_client_fails_cleanly_and_server_keeps_serving(tls_server, pki):
    with grpc.insecure_channel(tls_server.address) as channel:
        error = rpc_error(pb_grpc.GRPCInferenceServiceStub(channel).ServerLive, pb.ServerLiveRequest())
    assert error.code() == UNAVAILABLE
    assert tls_server.alive()
    test_tls_client_is_served(tls_server, pki)


def test_client_that_does_not_trust_the_server_fails(tls_server, pki):
    untrusting = grpc.ssl_channel_credentials(pki.read("other_ca_cert"))
    with grpc.secure_channel(tls_server.address, untrusting) as channel:
        error = rpc_error(pb_grpc.GRPCInferenceServiceStub(channel).ServerLive, pb.ServerLiveRequest())
    assert error.code() == UNAVAILABLE
    assert tls_server.alive()


# ---- mutual TLS --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtls_server(repo, pki):
    client = grpc.ssl_channel_credentials(
        pki.read("ca_cert"), pki.read("client_key"), pki.read("client_cert")
    )
    args = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
            "--tls-client-ca", str(pki.ca_cert))
    with running_server(repo, *args, credentials=client) as server:
        yield server, client


def test_mutual_tls_serves_a_client_with_a_trusted_certificate(mtls_server):
    server, client = mtls_server
    with grpc.secure_channel(server.address, client) as channel:
        np.testing.assert_array_equal(infer(pb_grpc.GRPCInferenceServiceStub(channel)), np.ones((1, 4)))


@pytest.mark.parametrize("who", ["no certificate", "untrusted certificate"])
def test_mutual_tls_refuses_other_clients(mtls_server, pki, who):
    server, client = mtls_server
    if who == "no certificate":
        credentials = grpc.ssl_channel_credentials(pki.read("ca_cert"))
    else:
        credentials = grpc.ssl_channel_credentials(
            pki.read("ca_cert"), pki.read("other_client_key"), pki.read("other_client_cert")
        )
    with grpc.secure_channel(server.address, credentials) as channel:
        error = rpc_error(pb_grpc.GRPCInferenceServiceStub(channel).ServerLive, pb.ServerLiveRequest())
    assert error.code() == UNAVAILABLE
    assert server.alive()
    test_mutual_tls_serves_a_client_with_a_trusted_certificate(mtls_server)


def test_mutual_tls_without_server_certificate_is_refused_at_startup(repo, pki):
    with pytest.raises(RuntimeError, match="needs --tls-cert"), \
            running_server(repo, "--tls-client-ca", str(pki.ca_cert)):
        pass


# ---- bearer tokens -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(repo, tmp_path_factory):
    token_file = tmp_path_factory.mktemp("auth") / "tokens"
    token_file.write_text("# Kairos API tokens\n\n" + "\n".join(TOKENS) + "\n")
    with running_server(repo, "--auth-token-file", str(token_file),
                        env={"KAIROS_AUTH_TOKENS": ENV_TOKEN}) as server:
        yield server


@pytest.fixture(scope="module")
def auth_stub(auth_server):
    with grpc.insecure_channel(auth_server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


PROTECTED = [
    ("ModelInfer", codec.build_request("identity_fp32", {"input": np.ones((1, 4), np.float32)})),
    ("ModelMetadata", pb.ModelMetadataRequest(name="identity_fp32")),
    ("ModelConfig", pb.ModelConfigRequest(name="identity_fp32")),
    ("ServerMetadata", pb.ServerMetadataRequest()),
    ("RepositoryIndex", pb.RepositoryIndexRequest()),
    ("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="identity_fp32")),
    ("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name="nope")),
]


@pytest.mark.parametrize("method,request_", PROTECTED, ids=[m for m, _ in PROTECTED])
@pytest.mark.parametrize("metadata", [None, bearer("wrong"), [("authorization", f"Basic {TOKENS[0]}")],
                                      bearer(TOKENS[0] + "x"), bearer("")],
                         ids=["none", "wrong", "basic-scheme", "prefix", "empty"])
def test_missing_or_wrong_token_is_unauthenticated(auth_stub, method, request_, metadata):
    error = rpc_error(getattr(auth_stub, method), request_, metadata=metadata)
    assert error.code() == UNAUTHENTICATED
    assert "bearer token" in error.details()


def test_stream_without_token_is_unauthenticated(auth_stub):
    request = PROTECTED[0][1]
    with pytest.raises(grpc.RpcError) as error:
        list(auth_stub.ModelStreamInfer(iter([request]), timeout=10))
    assert error.value.code() == UNAUTHENTICATED


@pytest.mark.parametrize("token", [*TOKENS, ENV_TOKEN])
def test_right_token_is_served(auth_stub, token):
    np.testing.assert_array_equal(infer(auth_stub, metadata=bearer(token)), np.ones((1, 4)))
    replies = list(auth_stub.ModelStreamInfer(iter([PROTECTED[0][1]]), timeout=10, metadata=bearer(token)))
    assert len(replies) == 1 and not replies[0].error_message
    auth_stub.RepositoryModelLoad(PROTECTED[5][1], timeout=30, metadata=bearer(token))


def test_health_probes_reflection_and_metrics_stay_open(auth_server, auth_stub):
    with grpc.insecure_channel(auth_server.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert auth_stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    assert auth_stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(auth_server.address) as channel:
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        assert any(reply.list_services_response.service for reply in replies)
    # Metrics are part of every server: no port is a failure, not a reason to skip.
    assert auth_server.metrics_port, "the server reported no metrics port"
    with urllib.request.urlopen(f"http://127.0.0.1:{auth_server.metrics_port}/metrics", timeout=10) as r:
        assert r.status == 200
        body = r.read().decode()
    assert "kairos_requests_total" in body and "kairos_build_info" in body


def test_tls_with_standard_token_call_credentials(repo, pki, tmp_path):
    """A stock gRPC client's access-token credentials over TLS: the common production setup."""
    token_file = tmp_path / "tokens"
    token_file.write_text(TOKENS[0] + "\n")
    tls = grpc.ssl_channel_credentials(pki.read("ca_cert"))
    args = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
            "--auth-token-file", str(token_file))
    with running_server(repo, *args, credentials=tls) as server:
        with_token = grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(TOKENS[0]))
        with grpc.secure_channel(server.address, with_token) as channel:
            np.testing.assert_array_equal(infer(pb_grpc.GRPCInferenceServiceStub(channel)), np.ones((1, 4)))
        with grpc.secure_channel(server.address, tls) as channel:
            error = rpc_error(pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer, PROTECTED[0][1])
            assert error.code() == UNAUTHENTICATED


def test_repository_control_can_be_disabled_even_for_authenticated_callers(repo, tmp_path):
    token_file = tmp_path / "tokens"
    token_file.write_text(TOKENS[0] + "\n")
    with running_server(repo, "--auth-token-file", str(token_file), "--disable-repository-control") as server, \
            grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        error = rpc_error(stub.RepositoryModelUnload, PROTECTED[6][1], metadata=bearer(TOKENS[0]))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        np.testing.assert_array_equal(infer(stub, metadata=bearer(TOKENS[0])), np.ones((1, 4)))


def test_token_sources(tmp_path):
    assert parse_tokens("# comment\n a \n\nb\n") == ["a", "b"]
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(SecurityConfigError, match="no token"):
        load_tokens(empty, environ={})
    assert load_tokens(None, environ={"KAIROS_AUTH_TOKENS": "x, y z"}) == ["x", "y", "z"]
    assert load_tokens(None, environ={}) == []
    with pytest.raises(SecurityConfigError):
        BearerTokenInterceptor([])


def test_empty_token_file_refuses_to_start(repo, tmp_path):
    """An empty token file must not silently switch authentication off."""
    empty = tmp_path / "tokens"
    empty.write_text("\n")
    with pytest.raises(RuntimeError, match="holds no token"), \
            running_server(repo, "--auth-token-file", str(empty)):
        pass


# ---- repository confinement --------------------------------------------------------------


def test_names_and_symlinks_cannot_reach_outside_the_repository(tmp_path):
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    write_model(repo, "inside", identity())
    write_model(outside, "secret", identity())
    write_model(outside, "secret_file", identity())
    (repo / "escape").symlink_to(outside / "secret", target_is_directory=True)  # model folder
    (repo / "inside" / "2").symlink_to(outside / "secret" / "1", target_is_directory=True)  # version
    (repo / "linked_file" / "1").mkdir(parents=True)  # model file
    (repo / "linked_file" / "1" / "model.onnx").symlink_to(outside / "secret_file" / "1" / "model.onnx")
    with running_server(repo) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for name in ("../outside/secret", str(outside / "secret"), "..", "a/../inside", "escape"):
            error = rpc_error(stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name=name))
            assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), name
            request = codec.build_request(name, {"input": np.ones((1, 4), np.float32)})
            assert rpc_error(stub.ModelInfer, request).code() in (
                grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, UNAVAILABLE)
        # The symlinked version folder is ignored: only version 1 (inside) is served.
        assert stub.ModelMetadata(pb.ModelMetadataRequest(name="inside"), timeout=10).versions == ["1"]
        for version in ("../1", "/1", "2"):
            request = codec.build_request("inside", {"input": np.ones((1, 4), np.float32)},
                                          model_version=version)
            assert rpc_error(stub.ModelInfer, request).code() in (
                grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
        # A model file linked from outside the repository is not loaded.
        request = codec.build_request("linked_file", {"input": np.ones((1, 4), np.float32)})
        assert rpc_error(stub.ModelInfer, request).code() == UNAVAILABLE
        np.testing.assert_array_equal(infer_model(stub, "inside"), np.ones((1, 4)))


def infer_model(stub, name: str) -> np.ndarray:
    request = codec.build_request(name, {"input": np.ones((1, 4), np.float32)})
    return codec.decode_response_outputs(stub.ModelInfer(request, timeout=10))["output"]


def test_kairos_client_over_mutual_tls_with_a_token(repo, pki, tmp_path):
    """The Kairos client library end to end: client certificate + CA + bearer token."""
    from kairos.client import InferenceClient, InferenceServerError

    token_file = tmp_path / "tokens"
    token_file.write_text(TOKENS[1] + "\n")
    client_credentials = grpc.ssl_channel_credentials(
        pki.read("ca_cert"), pki.read("client_key"), pki.read("client_cert")
    )
    args = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
            "--tls-client-ca", str(pki.ca_cert), "--auth-token-file", str(token_file))
    tls = {"ssl_root_cert": pki.ca_cert, "ssl_client_cert": pki.client_cert,
           "ssl_client_key": pki.client_key}
    with running_server(repo, *args, credentials=client_credentials) as server:
        with InferenceClient(server.address, token=TOKENS[1], **tls) as client:
            out = client.infer("identity_fp32", {"input": np.ones((1, 4), np.float32)}, timeout=10)
            np.testing.assert_array_equal(out["output"], np.ones((1, 4)))
        with InferenceClient(server.address, token="wrong", **tls) as client, \
                pytest.raises(InferenceServerError) as error:
            client.infer("identity_fp32", {"input": np.ones((1, 4), np.float32)}, timeout=10)
        assert error.value.status == "UNAUTHENTICATED"
