"""Hot reload, unload and graceful shutdown under load: zero accepted requests lost.

Each test keeps requests in flight from a background thread while the model
changes on disk, is reloaded (RPC or `--watch`), is unloaded, or the server
gets SIGTERM, then classifies every request:
- ok: answered correctly;
- refused: a clean refusal of a request that was never accepted (UNAVAILABLE
  with the server's own "shutting down" / "unloading" / "not ready" message);
- lost: anything else (an accepted request dropped or failed). Must be zero.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kairos.protos import codec
from kairos.protos import grpc_service_pb2 as pb
from kairos.protos import grpc_service_pb2_grpc as pb_grpc
from kairos_testing.models import write_model
from kairos_testing.reliability import mlp, mlp_reference, save_atomically
from kairos_testing.server import running_server

WIDTH = 128
SLOW_WIDTH = 1024
TIMEOUT = 60
# Short profiling keeps each reload quick; the fixed policy never refuses early.
FAST_CONFIG = "scheduling:\n  policy: fixed\n  max_queue_delay_ms: 1\n  profile_budget_s: 0.2\n"
REFUSALS = ("shutting down", "unloading", "not ready", "not loaded")


class LoadThread(threading.Thread):
    """Keeps `window` requests in flight until stopped; records every outcome."""

    def __init__(self, address: str, model: str, width: int, window: int = 16,
                 check=None) -> None:
        super().__init__(daemon=True)
        self.address, self.model, self.width, self.window = address, model, width, window
        self.check = check  # (input, output) -> bool: is this a right answer?
        self.stop = threading.Event()
        self.outcomes: Counter = Counter()
        self.lost: list[str] = []
        self.ok_times: list[float] = []
        self.rng = np.random.default_rng(1)

    def run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            pending: list = []
            while not self.stop.is_set() or pending:
                if not self.stop.is_set() and len(pending) < self.window:
                    x = self.rng.standard_normal((1 + len(pending) % 3, self.width)).astype(np.float32)
                    request = codec.build_request(self.model, {"input": x})
                    pending.append((x, stub.ModelInfer.future(request, timeout=TIMEOUT)))
                    continue
                x, future = pending.pop(0)
                self._record(x, future)

    def _record(self, x: np.ndarray, future) -> None:
        code, details = future.code(), future.details() or ""
        if code == grpc.StatusCode.OK:
            out = codec.decode_response_outputs(future.result())["output"]
            if self.check is None or self.check(x, out):
                self.outcomes["ok"] += 1
                self.ok_times.append(time.monotonic())
                return
            self.lost.append("wrong answer")
        elif code == grpc.StatusCode.UNAVAILABLE and any(r in details for r in REFUSALS):
            self.outcomes["refused"] += 1
            return
        else:
            self.lost.append(f"{code.name}: {details}")
        self.outcomes["lost"] += 1

    def wait_for_ok(self, count: int, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while self.outcomes["ok"] < count:
            assert time.monotonic() < end, f"no answers: {self.outcomes} {self.lost[:3]}"
            time.sleep(0.02)

    def finish(self) -> Counter:
        self.stop.set()
        self.join(TIMEOUT + 10)
        assert not self.is_alive()
        return self.outcomes


def any_of(*models):
    """A check accepting the answer of any of these models (old or new across a swap)."""

    def check(x: np.ndarray, out: np.ndarray) -> bool:
        return any(np.allclose(out, mlp_reference(m, x), rtol=1e-4, atol=1e-4) for m in models)

    return check


def answers_like(stub, model_name: str, model) -> bool:
    x = np.random.default_rng(9).standard_normal((2, WIDTH)).astype(np.float32)
    reply = stub.ModelInfer(codec.build_request(model_name, {"input": x}), timeout=TIMEOUT)
    out = codec.decode_response_outputs(reply)["output"]
    return np.allclose(out, mlp_reference(model, x), rtol=1e-4, atol=1e-4)


def test_reload_by_rpc_under_load_loses_nothing(tmp_path: Path):
    models = [mlp(WIDTH, 2, seed=s) for s in range(4)]
    write_model(tmp_path, "mlp", models[0], config=FAST_CONFIG)
    with running_server(tmp_path) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        load = LoadThread(server.address, "mlp", WIDTH, check=any_of(*models))
        load.start()
        load.wait_for_ok(20)
        # Same version, new weights on disk; then a new version folder (the old one drains).
        for step, model in enumerate(models[1:], start=1):
            version = 1 if step < 3 else 2
            save_atomically(model, tmp_path / "mlp" / str(version) / "model.onnx")
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mlp"), timeout=TIMEOUT)
            assert answers_like(stub, "mlp", model), f"reload {step} not in effect"
            load.wait_for_ok(load.outcomes["ok"] + 20)
        outcomes = load.finish()
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=TIMEOUT)
        assert [(m.name, m.version, m.state) for m in index.models] == [("mlp", "2", "READY")]
    print(f"reload by RPC x3 under load: {dict(outcomes)}")
    assert outcomes["lost"] == 0, load.lost[:5]
    assert outcomes["refused"] == 0  # a reload refuses nothing: the new version is swapped in
    assert outcomes["ok"] > 60


def test_watch_reloads_a_changed_model_under_load(tmp_path: Path):
    old, new = mlp(WIDTH, 2, seed=10), mlp(WIDTH, 2, seed=11)
    write_model(tmp_path, "mlp", old, config=FAST_CONFIG)
    with running_server(tmp_path, "--watch", "--watch-interval", "0.2") as server, \
            grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        load = LoadThread(server.address, "mlp", WIDTH, check=any_of(old, new))
        load.start()
        load.wait_for_ok(20)
        save_atomically(new, tmp_path / "mlp" / "1" / "model.onnx")
        end = time.monotonic() + 60
        while not answers_like(stub, "mlp", new):
            assert time.monotonic() < end, "--watch did not reload the changed model"
            time.sleep(0.1)
        # A new model folder appears: --watch loads it too.
        write_model(tmp_path, "added", old, config=FAST_CONFIG)
        while True:
            try:
                assert answers_like(stub, "added", old)
                break
            except grpc.RpcError:
                assert time.monotonic() < end, "--watch did not load the new model"
                time.sleep(0.1)
        # The folder goes away: --watch unloads it (its requests drain first).
        shutil.rmtree(tmp_path / "added")
        while True:
            try:
                answers_like(stub, "added", old)
            except grpc.RpcError as error:
                assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND)
                break
            assert time.monotonic() < end, "--watch did not unload the removed model"
            time.sleep(0.1)
        load.wait_for_ok(load.outcomes["ok"] + 20)
        outcomes = load.finish()
    print(f"--watch reload under load: {dict(outcomes)}")
    assert outcomes["lost"] == 0 and outcomes["refused"] == 0, load.lost[:5]


@pytest.fixture(scope="module")
def slow_repo(tmp_path_factory) -> Path:
    """A model slow enough (ms per small batch) that requests queue behind each other."""
    repo = tmp_path_factory.mktemp("slow")
    # Batches run on an executor thread, so the event loop keeps admitting (queueing)
    # requests while one runs: there is a real queue to drain.
    config = FAST_CONFIG + "  execution: thread\nmax_batch_size: 2\n"
    write_model(repo, "slow", mlp(SLOW_WIDTH, 6, seed=5), config=config)
    return repo


def test_unload_drains_in_flight_requests(slow_repo: Path):
    with running_server(slow_repo) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        x = np.ones((1, SLOW_WIDTH), np.float32)
        done_at: dict[int, float] = {}
        futures = []
        for _ in range(200):
            future = stub.ModelInfer.future(codec.build_request("slow", {"input": x}), timeout=TIMEOUT)
            future.add_done_callback(lambda f: done_at.setdefault(id(f), time.monotonic()))
            futures.append(future)
        futures[5].result()  # the server is busy: by now it has read and queued many more
        started = time.monotonic()
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="slow"), timeout=TIMEOUT)
        unloaded = time.monotonic()
        ok = refused = 0
        lost = []  # accepted, then dropped (e.g. the queue thrown away), or failed otherwise
        for future in futures:
            code, details = future.code(), future.details() or ""
            if code == grpc.StatusCode.OK:
                ok += 1
            elif code == grpc.StatusCode.UNAVAILABLE and any(r in details for r in REFUSALS):
                refused += 1  # arrived after the unload began: never accepted
            else:
                lost.append(f"{code.name}: {details}")
        assert not lost, f"{len(lost)} accepted requests lost across the unload: {lost[:3]}"
        # Requests answered while the unload ran: drained, not dropped.
        after_unload_began = sum(
            1 for f in futures if f.code() == grpc.StatusCode.OK and done_at[id(f)] > started
        )
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(codec.build_request("slow", {"input": x}), timeout=TIMEOUT)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    print(f"unload under load: ok {ok} ({after_unload_began} finished during the unload), "
          f"refused {refused}, unload took {unloaded - started:.2f}s")
    assert ok > 1 and after_unload_began > 0


def test_sigterm_drains_accepted_requests_and_exits_zero(slow_repo: Path):
    args = ("--drain-delay-seconds", "2", "--grace-seconds", "30")
    with running_server(slow_repo, *args) as server:
        load = LoadThread(server.address, "slow", SLOW_WIDTH, window=32)
        load.start()
        load.wait_for_ok(10)
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            inference = pb_grpc.GRPCInferenceServiceStub(channel)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            status = None
            while status != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert time.monotonic() - signalled < 10, "health never turned NOT_SERVING"
                status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            load.stop.set()  # no new requests from here: all sent ones get answers
            assert not inference.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
            # During --drain-delay-seconds requests are still served (load balancers that
            # have not yet seen NOT_SERVING lose nothing); after it the listener closes.
            request = codec.build_request("slow", {"input": np.ones((1, SLOW_WIDTH), np.float32)})
            assert inference.ModelInfer(request, timeout=5).model_name == "slow"
        outcomes = load.finish()
        code = server.process.wait(60)
        log = server.log()
    answered_after_signal = sum(1 for t in load.ok_times if t > signalled)
    print(f"SIGTERM under load: {dict(outcomes)}; answered after the signal: {answered_after_signal}")
    assert code == 0, log[-2000:]
    assert outcomes["lost"] == 0, load.lost[:5]
    assert answered_after_signal > 0  # requests in flight at SIGTERM were finished, not dropped
    assert "shut down cleanly" in log


def test_sigterm_ends_open_streams_after_answering_them(slow_repo: Path):
    """A client holding a stream open does not hold up shutdown for the whole grace
    period: its stream answers what the server read, then ends UNAVAILABLE."""
    import queue

    with running_server(slow_repo, "--grace-seconds", "120") as server, \
            grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        requests: queue.Queue = queue.Queue()
        replies = stub.ModelStreamInfer(iter(requests.get, None), timeout=TIMEOUT * 2)
        x = np.ones((1, SLOW_WIDTH), np.float32)
        for index in range(40):
            request = codec.build_request("slow", {"input": x}, request_id=str(index))
            requests.put(request)
        first = next(replies)
        assert not first.error_message, first.error_message
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        answered, refused, ended = [first], [], None
        try:
            for reply in replies:  # the client never half-closes
                (refused if reply.error_message else answered).append(reply)
        except grpc.RpcError as error:
            ended = error
        finally:
            requests.put(None)
        code = server.process.wait(60)
    assert ended is not None and ended.code() == grpc.StatusCode.UNAVAILABLE, ended
    assert "shutting down" in ended.details()
    assert all(r.error_message.startswith("UNAVAILABLE: server is shutting down") for r in refused)
    ids = [r.infer_response.id for r in answered + refused]
    assert len(ids) == len(set(ids))  # nothing answered twice
    print(f"stream at SIGTERM: {len(answered)} answered, {len(refused)} refused, "
          f"{40 - len(ids)} unread (to resend), stream ended after {time.monotonic() - signalled:.1f}s")
    assert code == 0
    assert len(answered) > 1  # requests in flight at SIGTERM were finished


def test_a_broken_new_model_keeps_the_old_one_serving(tmp_path: Path):
    """A bad deploy (corrupt file) fails the reload, not the model: the version in
    memory keeps answering, by RPC reload and by --watch alike."""
    model = mlp(WIDTH, 2, seed=20)
    write_model(tmp_path, "mlp", model, config=FAST_CONFIG)
    with running_server(tmp_path, "--watch", "--watch-interval", "0.2") as server, \
            grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        load = LoadThread(server.address, "mlp", WIDTH, check=any_of(model))
        load.start()
        load.wait_for_ok(20)
        path = tmp_path / "mlp" / "1" / "model.onnx"
        temporary = path.with_name("broken.tmp")
        temporary.write_bytes(b"not an onnx model")
        temporary.replace(path)
        with pytest.raises(grpc.RpcError) as error:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mlp"), timeout=TIMEOUT)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        time.sleep(1.0)  # several --watch polls see the broken file and try it too
        assert answers_like(stub, "mlp", model)
        load.wait_for_ok(load.outcomes["ok"] + 20)
        outcomes = load.finish()
        assert "watch: model 'mlp' failed to load" in server.log()  # --watch tried too
    assert outcomes["lost"] == 0 and outcomes["refused"] == 0, load.lost[:5]
