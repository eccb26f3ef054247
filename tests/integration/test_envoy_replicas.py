"""Three real Kairos replicas behind a real Envoy (deploy/envoy's config), on loopback.

Under a paced closed-loop load at about half of the aggregate capacity (measured
first, through Envoy, with the same client):
- a rolling restart (SIGTERM one replica at a time, wait until it is ready and back
  in Envoy's rotation) fails no client request;
- SIGKILL of one replica fails at most the requests in flight at that moment, none
  after Envoy ejected it (the time that takes is measured), and it rejoins when
  started again;
- a model reload on every replica (RepositoryModelLoad sent to each directly) fails
  no client request, and afterwards every answer comes from the new model.

The figures are printed (run with -s to see them). Timings that Envoy's defaults
set (health check every 1 s) are shortened here so the file runs in well under a
minute; the logic is the checked-in config's (the same generator writes both).
"""

from __future__ import annotations

import contextlib
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from kairos.protos import codec
from kairos.protos import grpc_service_pb2 as pb
from kairos.protos import grpc_service_pb2_grpc as pb_grpc
from kairos_testing.envoy import Envoy, Replica, config_module, free_port, running_envoy
from kairos_testing.load import PacedLoad, failures, in_flight_at, summary, throughput
from kairos_testing.models import write_model
from kairos_testing.reliability import mlp, mlp_reference, save_atomically

WIDTH = 64
MODEL = "mlp"
# The fixed policy never refuses early; a short profile keeps starts and reloads quick.
CONFIG = "scheduling:\n  policy: fixed\n  max_queue_delay_ms: 1\n  profile_budget_s: 0.2\n"
HEALTH_INTERVAL_S = 0.25
UNHEALTHY_THRESHOLD = 2
# Longer than Envoy needs to see NOT_SERVING (interval x threshold + a check's timeout).
DRAIN_DELAY_S = 1.0
GRACE_S = 10.0
WORKERS = 12
pytestmark = pytest.mark.timeout(150)


@dataclass
class Cluster:
    envoy: Envoy
    replicas: list[Replica]
    repo: Path
    rate: float
    x: np.ndarray
    answers: dict[str, np.ndarray]  # model seed name -> expected output for x

    def load(self, *accepted: str) -> PacedLoad:
        expected = [self.answers[name] for name in accepted]

        def check(out: np.ndarray) -> bool:
            return any(np.allclose(out, e, rtol=1e-4, atol=1e-4) for e in expected)

        load = PacedLoad(self.envoy.address, MODEL, self.x, check, self.rate, workers=WORKERS)
        load.start()
        load.wait_for_ok(20)
        return load


def wait_until(condition, timeout: float, what: str, step: float = 0.01) -> float:
    """Poll `condition` until true; returns the time.monotonic() at which it was seen."""
    end = time.monotonic() + timeout
    while True:
        if condition():
            return time.monotonic()
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(step)


def in_rotation(cluster: Cluster, replica: Replica, timeout: float = 30.0) -> None:
    """Envoy counts it healthy and sends it requests again."""
    wait_until(lambda: cluster.envoy.healthy(replica.grpc_port), timeout,
               f"{replica.address} healthy in Envoy", step=0.05)
    before = cluster.envoy.hosts()[replica.grpc_port]["stats"].get("rq_success", 0)
    wait_until(lambda: cluster.envoy.hosts()[replica.grpc_port]["stats"].get("rq_success", 0)
               > before + 10, timeout, f"traffic reaching {replica.address}", step=0.05)


def envoy_stats(envoy: Envoy) -> dict[str, int]:
    names = ("upstream_rq_retry", "upstream_rq_retry_success", "upstream_rq_retry_overflow",
             "upstream_cx_connect_fail", "outlier_detection.ejections_enforced_total",
             "lb_healthy_panic", "health_check.failure")
    return {name: envoy.stat(f"cluster.kairos.{name}") for name in names}


def per_replica(cluster: Cluster) -> dict[int, dict]:
    """Envoy's per-host counts (errors, timeouts) and each replica's own failure counts by
    reason (since its last start): where failures happened."""
    hosts = cluster.envoy.hosts()
    out = {}
    for replica in cluster.replicas:
        stats = hosts[replica.grpc_port]["stats"]
        failures_by_reason = {}
        with contextlib.suppress(OSError):
            url = f"http://127.0.0.1:{replica.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - loopback
                for line in reply.read().decode().splitlines():
                    found = re.match(r'kairos_request_failures_total\{.*reason="(\w+)".*\} (\S+)', line)
                    if found and float(found[2]):
                        failures_by_reason[found[1]] = failures_by_reason.get(found[1], 0) + float(found[2])
        out[replica.grpc_port] = {"envoy": {k: stats.get(k, 0) for k in ("rq_error", "rq_timeout")},
                                  "kairos failures": failures_by_reason}
    return out


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    repo = tmp_path_factory.mktemp("repo")
    workdir = tmp_path_factory.mktemp("replicas")
    models = {"old": mlp(WIDTH, 2, seed=1), "new": mlp(WIDTH, 2, seed=2)}
    write_model(repo, MODEL, models["old"], config=CONFIG)
    x = np.random.default_rng(3).standard_normal((1, WIDTH)).astype(np.float32)
    answers = {name: mlp_reference(model, x) for name, model in models.items()}
    args = ["--model-repository", str(repo), "--drain-delay-seconds", str(DRAIN_DELAY_S),
            "--grace-seconds", str(GRACE_S)]
    replicas = [Replica(args, workdir) for _ in range(3)]
    envoy_config = config_module()
    settings = envoy_config.EnvoySettings(
        upstreams=[("127.0.0.1", r.grpc_port) for r in replicas],
        listen=("127.0.0.1", free_port()), admin=("127.0.0.1", free_port()),
        health_interval_s=HEALTH_INTERVAL_S, health_timeout_s=0.5,
        unhealthy_threshold=UNHEALTHY_THRESHOLD, base_ejection_time_s=1.0)
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready()
        with running_envoy(envoy_config.render(settings), settings.listen[1],
                           settings.admin[1]) as envoy:
            for replica in replicas:
                wait_until(lambda r=replica: envoy.healthy(r.grpc_port), 30, "all healthy")
            rate = measure_half_capacity(envoy, x, answers["old"])
            yield Cluster(envoy, replicas, repo, rate, x, answers)
    finally:
        for replica in replicas:
            replica.stop()


def measure_half_capacity(envoy: Envoy, x: np.ndarray, expected: np.ndarray) -> float:
    """Half of what the same client gets through Envoy, unpaced, in 2 seconds."""
    def check(out: np.ndarray) -> bool:
        return np.allclose(out, expected, rtol=1e-4, atol=1e-4)

    probe = PacedLoad(envoy.address, MODEL, x, check, rate=None, workers=WORKERS * 2)
    probe.start()
    probe.wait_for_ok(50)
    time.sleep(2.0)
    records = probe.finish()
    assert failures(records) == [], summary(records)
    capacity = throughput(records)
    print(f"\naggregate capacity through Envoy (this client, 3 replicas): {capacity:.0f} req/s; "
          f"load at half: {capacity / 2:.0f} req/s")
    return capacity / 2


def explain(failed, events) -> list[str]:
    """Each failure with its status and when it was sent and answered, relative to the
    last event before it (SIGTERM / exit / ready of which replica)."""
    lines = []
    for r in failed[:10]:
        name, port, at = max((e for e in events if e[2] <= r.start), key=lambda e: e[2],
                             default=("start", 0, r.start))
        lines.append(f"{r.code} '{r.details}': sent {1000 * (r.start - at):+.0f} ms after "
                     f"{name} of :{port}, answered after {1000 * (r.end - r.start):.0f} ms")
    return lines


def report(name: str, records, extra: dict) -> None:
    span = max(r.end for r in records) - min(r.start for r in records)
    print(f"\n{name}: {summary(records)} in {span:.1f}s "
          f"({throughput(records):.0f} ok/s); {extra}")


def test_rolling_restart_loses_nothing(cluster: Cluster) -> None:
    stats = envoy_stats(cluster.envoy)
    load = cluster.load("old")
    drains, events = [], []
    for replica in cluster.replicas:
        started = time.monotonic()
        replica.signal(signal.SIGTERM)
        events.append(("SIGTERM", replica.grpc_port, started))
        assert replica.wait_exit(GRACE_S + 10) == 0, replica.log()
        events.append(("exited", replica.grpc_port, time.monotonic()))
        drains.append(round(time.monotonic() - started, 2))
        replica.start()
        replica.wait_ready()
        events.append(("ready", replica.grpc_port, time.monotonic()))
        in_rotation(cluster, replica)
    load.wait_for_ok(50)
    records = load.finish()
    report("rolling restart", records, {"drain seconds": drains,
                                        **delta(envoy_stats(cluster.envoy), stats),
                                        "per replica": per_replica(cluster)})
    lost = explain(failures(records), events)
    print("\n".join(lost))
    assert not lost
    assert len(records) > 200


def test_sigkill_fails_only_requests_in_flight_and_none_after_ejection(cluster: Cluster) -> None:
    victim = cluster.replicas[1]
    stats = envoy_stats(cluster.envoy)
    load = cluster.load("old")
    on_victim = cluster.envoy.hosts()[victim.grpc_port]["stats"].get("rq_active", 0)
    killed = time.monotonic()
    victim.signal(signal.SIGKILL)
    events = [("SIGKILL", victim.grpc_port, killed)]
    ejected = wait_until(lambda: not cluster.envoy.healthy(victim.grpc_port), 10,
                         "Envoy to eject the killed replica")
    events.append(("ejection", victim.grpc_port, ejected))
    victim.wait_exit(10)
    events.append(("exited", victim.grpc_port, time.monotonic()))
    load.wait_for_ok(100)  # served by the two others
    events.append(("restart", victim.grpc_port, time.monotonic()))
    victim.start()
    victim.wait_ready()
    events.append(("ready", victim.grpc_port, time.monotonic()))
    in_rotation(cluster, victim)
    records = load.finish()
    failed = failures(records)
    in_flight = in_flight_at(records, killed)
    report("SIGKILL", records, {
        "in flight at the kill (all replicas)": len(in_flight),
        "active on the victim (Envoy, just before)": on_victim,
        "failed": len(failed), "ejected after (ms)": round((ejected - killed) * 1000),
        **delta(envoy_stats(cluster.envoy), stats)})
    print("\n".join(explain(failed, events)))
    assert all(r.start <= killed for r in failed), "a request sent after the kill failed"
    assert len(failed) <= len(in_flight)
    assert not [r for r in failed if r.start >= ejected]
    assert ejected - killed < 5.0


def test_model_reload_on_every_replica_loses_nothing(cluster: Cluster) -> None:
    stats = envoy_stats(cluster.envoy)
    load = cluster.load("old", "new")
    save_atomically(mlp(WIDTH, 2, seed=2), cluster.repo / MODEL / "1" / "model.onnx")
    request = codec.build_request(MODEL, {"input": cluster.x})
    for replica in cluster.replicas:
        with grpc.insecure_channel(replica.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=MODEL), timeout=60)
            out = codec.decode_response_outputs(stub.ModelInfer(request, timeout=10))["output"]
            assert np.allclose(out, cluster.answers["new"], rtol=1e-4, atol=1e-4)
        load.wait_for_ok(200)  # mixed answers meanwhile: old from the others, new from this one
    records = load.finish()
    report("reload on every replica", records, delta(envoy_stats(cluster.envoy), stats))
    assert failures(records) == [], failures(records)[:5]
    # Once every replica reloaded, every answer through Envoy is the new model's.
    after = cluster.load("new")
    after.wait_for_ok(50)
    assert failures(after.finish()) == []
