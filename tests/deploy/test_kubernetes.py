"""deploy/kubernetes/: every core manifest passes `kubernetes-validate --strict`, and the
parts agree with each other and with Kairos (its flags, ports, metric names, timings)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from kairos_testing.kubernetes import (
    KSERVE,
    KUBERNETES,
    documents,
    drain_budget,
    port_named,
    serve_args,
    validate_strict,
)
from kairos_testing.prometheus import binary

CORE = sorted(KUBERNETES.glob("*.yaml")) + [KSERVE / "hpa.yaml", KSERVE / "pdb.yaml"]
DEPLOYMENT = documents(KUBERNETES / "deployment.yaml")[0]
POD = DEPLOYMENT["spec"]["template"]
CONTAINER = POD["spec"]["containers"][0]
ARGS = serve_args(CONTAINER["args"])
ADAPTER = yaml.safe_load(documents(KUBERNETES / "prometheus-adapter.yaml")[0]["data"]["config.yaml"])


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(KUBERNETES)))
def test_validates_strictly(path: Path) -> None:
    done = validate_strict(path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_strict_validation_rejects_a_typo(tmp_path: Path) -> None:
    broken = yaml.safe_load((KUBERNETES / "deployment.yaml").read_text())
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 8001}}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    assert validate_strict(path).returncode != 0


def test_probes_use_the_grpc_health_service_on_the_grpc_port() -> None:
    grpc_port = port_named(CONTAINER, "grpc")
    assert grpc_port == 8001  # the image's entrypoint passes --grpc-port 8001
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert CONTAINER[probe]["grpc"]["port"] == grpc_port
    assert CONTAINER["readinessProbe"]["grpc"]["service"] == "inference.GRPCInferenceService"


def test_termination_timings_match_the_drain() -> None:
    """The kubelet's SIGKILL must not cut a drain short, nor liveness restart a draining pod."""
    budget = drain_budget(CONTAINER, ARGS)
    assert POD["spec"]["terminationGracePeriodSeconds"] >= budget + 1
    assert POD["spec"]["terminationGracePeriodSeconds"] <= budget + 10  # not needlessly long
    live = CONTAINER["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > ARGS.drain_delay_seconds + ARGS.grace_seconds
    assert ARGS.drain_delay_seconds > 0
    # A rolling update never drops below the replica count, and the PDB allows one eviction.
    assert DEPLOYMENT["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_scrape_annotations_name_the_metrics_port() -> None:
    annotations = POD["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port_named(CONTAINER, "metrics") == 8002
    assert annotations["prometheus.io/path"] == "/metrics"


def test_anti_affinity_spreads_replicas_over_nodes() -> None:
    terms = POD["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert terms[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert terms[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == \
        DEPLOYMENT["spec"]["selector"]["matchLabels"]


def test_services_and_pdb_select_the_pods() -> None:
    labels = POD["metadata"]["labels"]
    for service in documents(KUBERNETES / "service.yaml"):
        assert service["spec"]["selector"].items() <= labels.items()
        grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert grpc["targetPort"] == "grpc" and grpc["appProtocol"] == "kubernetes.io/h2c"
    pdb = documents(KUBERNETES / "pdb.yaml")[0]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("path", [KUBERNETES / "hpa.yaml", KSERVE / "hpa.yaml"],
                         ids=["deployment", "kserve"])
def test_hpa_scales_on_metrics_the_adapter_serves(path: Path) -> None:
    hpa = documents(path)[0]
    served = {rule["name"]["as"] for rule in ADAPTER["rules"]}
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert wanted == served == {"kairos_queue_delay_seconds", "kairos_refused_per_second"}
    assert hpa["spec"]["minReplicas"] >= 2


def test_hpa_targets_the_deployment() -> None:
    target = documents(KUBERNETES / "hpa.yaml")[0]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", DEPLOYMENT["metadata"]["name"])


def exported_names() -> set[str]:
    from kairos.server.metrics.prometheus import PrometheusMetrics

    text = PrometheusMetrics().exposition()
    text = text.decode() if isinstance(text, bytes) else text
    names = set()
    for name, kind in re.findall(r"# TYPE (\S+) (\S+)", text):
        names |= {name, f"{name}_sum", f"{name}_count", f"{name}_bucket"} if kind == "histogram" else {name}
    return names


def test_adapter_rules_read_series_kairos_exports() -> None:
    exported = exported_names()
    for rule in ADAPTER["rules"]:
        series = re.findall(r"\b(kairos_[a-z_]+)\b", rule["seriesQuery"] + rule["metricsQuery"])
        assert series and set(series) <= exported, set(series) - exported
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_adapter_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each metricsQuery, templated as prometheus-adapter does, parsed by promtool."""
    rules = []
    for index, rule in enumerate(ADAPTER["rules"]):
        query = (rule["metricsQuery"].replace("<<.LabelMatchers>>", 'namespace="ns",pod=~"a|b"')
                 .replace("<<.GroupBy>>", "pod"))
        rules.append({"record": f"adapter:query{index}", "expr": query})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": rules}]}))
    done = subprocess.run([binary("promtool"), "check", "rules", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_scrape_config_is_valid_and_keeps_pod_labels(tmp_path: Path) -> None:
    """promtool checks the job; Debian's Prometheus is built without Kubernetes service
    discovery, so the check sees static targets in its place (the relabelling is checked)."""
    text = documents(KUBERNETES / "prometheus-scrape.yaml")[0]["data"]["prometheus.yml"]
    config = yaml.safe_load(text)
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
        job["static_configs"] = [{"targets": ["127.0.0.1:8002"]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([binary("promtool"), "check", "config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    relabels = yaml.safe_load(text)["scrape_configs"][0]["relabel_configs"]
    assert {"namespace", "pod"} <= {r.get("target_label") for r in relabels}
