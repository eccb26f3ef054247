"""deploy/envoy/: the checked-in config is the generator's output and a real Envoy accepts it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from kairos_testing.envoy import config_module, envoy_binary

ENVOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "envoy"
CHECKED_IN = ENVOY_DIR / "envoy.yaml"


def validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path),
                           "--disable-hot-restart", "-l", "error"],
                          capture_output=True, text=True, timeout=120)


def test_checked_in_config_is_the_generators_output() -> None:
    assert CHECKED_IN.read_text() == config_module().render(), (
        "regenerate: python deploy/envoy/envoy_config.py > deploy/envoy/envoy.yaml")


def test_envoy_validates_the_checked_in_config() -> None:
    done = validate(CHECKED_IN)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout


@pytest.mark.parametrize("replicas", [1, 5])
def test_envoy_validates_generated_configs(tmp_path: Path, replicas: int) -> None:
    module = config_module()
    settings = module.EnvoySettings(upstreams=[("10.0.0.1", 8001 + i) for i in range(replicas)],
                                    listen=("0.0.0.0", 8001), health_interval_s=0.5)
    path = tmp_path / "envoy.yaml"
    path.write_text(module.render(settings))
    done = validate(path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_validation_is_real(tmp_path: Path) -> None:
    """A misspelt field fails validation, so a pass means something."""
    config = config_module().envoy_config()
    config["static_resources"]["clusters"][0]["lb_polcy"] = "LEAST_REQUEST"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    assert validate(path).returncode != 0


def test_what_the_config_promises() -> None:
    config = yaml.safe_load(CHECKED_IN.read_text())
    (cluster,) = config["static_resources"]["clusters"]
    assert cluster["lb_policy"] == "LEAST_REQUEST"
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]
    (check,) = cluster["health_checks"]
    assert check["grpc_health_check"]["service_name"] == "inference.GRPCInferenceService"
    assert cluster["outlier_detection"]["consecutive_gateway_failure"] >= 1
    # Ejections and health changes reach the load balancer at once, not up to 1 s later.
    assert cluster["common_lb_config"]["update_merge_window"] == "0s"
    assert cluster["common_lb_config"]["healthy_panic_threshold"]["value"] == 0
    assert len(cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]) == 3
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    paths = [r["match"].get("path", r["match"].get("prefix")) for r in routes]
    assert paths == ["/inference.GRPCInferenceService/ModelInfer",
                     "/inference.GRPCInferenceService/ModelStreamInfer", "/"]
    route, stream, other = (r["route"] for r in routes)
    assert "retry_policy" not in stream  # a started stream cannot be replayed
    # Other RPCs (metadata, repository control) have no per-try timeout to cut them short.
    assert "per_try_timeout" not in other["retry_policy"]
    retry = route["retry_policy"]
    assert {"unavailable", "resource-exhausted"} <= set(retry["retry_on"].split(","))
    # The request's grpc-timeout is the deadline (uncapped), and each try gets what is left.
    assert route["max_grpc_timeout"] == "0s"
    assert retry["per_try_timeout"]
    assert retry["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
