"""deploy/kubernetes/kserve/: the KServe kinds validate against KServe's own CRDs (vendored,
unmodified, in deploy/kubernetes/schemas/kserve/) with unknown fields rejected, and the
runtime is one `kairos serve` accepts as it stands.

The CRD schemas allow unknown fields (no `additionalProperties: false`), so a typo would
pass; `strict()` adds `additionalProperties: false` to every object schema that lists its
properties and does not say otherwise (`x-kubernetes-preserve-unknown-fields`,
`additionalProperties`), the rule the API server applies with field validation Strict.
"""

from __future__ import annotations

import copy
import hashlib
import re
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml
from kairos_testing.kubernetes import CRDS, KSERVE, documents, drain_budget, port_named, serve_args

RUNTIMES = [KSERVE / "clusterservingruntime.yaml", KSERVE / "servingruntime.yaml"]
MANIFESTS = [*RUNTIMES, KSERVE / "inferenceservice.yaml"]
CRD_FILES = {
    "ClusterServingRuntime": "serving.kserve.io_clusterservingruntimes.yaml",
    "ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
    "InferenceService": "serving.kserve.io_inferenceservices.yaml",
}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def strict(schema: dict) -> dict:
    """A copy of an OpenAPI schema that rejects fields it does not list."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (node.get("type") == "object" and "properties" in node
                    and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@cache
def crd(kind: str) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the 2 MB InferenceService CRD
    return yaml.load((CRDS / CRD_FILES[kind]).read_text(), Loader=loader)  # noqa: S506


@cache
def validator(kind: str, version: str) -> jsonschema.Draft7Validator:
    (entry,) = [v for v in crd(kind)["spec"]["versions"] if v["name"] == version]
    assert entry["served"], f"{kind} {version} is not served"
    schema = strict(entry["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {  # ObjectMeta, as far as these manifests use it
        "type": "object", "additionalProperties": False, "required": ["name"],
        "properties": {"name": {"type": "string", "pattern": DNS_LABEL.pattern},
                       "namespace": {"type": "string"},
                       "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                       "annotations": {"type": "object",
                                       "additionalProperties": {"type": "string"}}}}
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return jsonschema.Draft7Validator(schema)


def errors(manifest: dict) -> list[str]:
    group, _, version = manifest["apiVersion"].partition("/")
    definition = crd(manifest["kind"])
    assert group == definition["spec"]["group"]
    assert manifest["kind"] == definition["spec"]["names"]["kind"]
    found = validator(manifest["kind"], version).iter_errors(manifest)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in found]


def test_crds_are_the_vendored_unmodified_files() -> None:
    notice = (CRDS / "NOTICE.md").read_text()
    for name in CRD_FILES.values():
        digest = hashlib.sha256((CRDS / name).read_bytes()).hexdigest()
        assert digest in notice, f"{name} differs from the vendored file's checksum"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_validates_against_kserves_crd(path: Path) -> None:
    (manifest,) = documents(path)
    assert errors(manifest) == []


def test_unknown_fields_are_rejected() -> None:
    (runtime,) = documents(RUNTIMES[0])
    runtime["spec"]["protocolVersion"] = ["grpc-v2"]  # the field is protocolVersions
    assert errors(runtime)
    (service,) = documents(KSERVE / "inferenceservice.yaml")
    service["spec"]["predictor"]["model"]["storageURI"] = "pvc://x"  # storageUri
    assert errors(service)
    (runtime,) = documents(RUNTIMES[0])
    runtime["spec"]["containers"][0]["readinessProbe"]["grpc"]["servce"] = "x"
    assert errors(runtime)


def test_namespaced_and_cluster_runtimes_are_the_same() -> None:
    (cluster,), (namespaced,) = documents(RUNTIMES[0]), documents(RUNTIMES[1])
    assert (cluster["kind"], namespaced["kind"]) == ("ClusterServingRuntime", "ServingRuntime")
    assert cluster["spec"] == namespaced["spec"]
    assert cluster["metadata"]["name"] == namespaced["metadata"]["name"]


@pytest.mark.parametrize("path", RUNTIMES, ids=lambda p: p.name)
def test_runtime_is_what_kserve_and_kairos_expect(path: Path) -> None:
    (runtime,) = documents(path)
    spec = runtime["spec"]
    assert {"name": "onnx", "version": "1", "autoSelect": True, "priority": 1} in \
        spec["supportedModelFormats"]
    assert spec["protocolVersions"] == ["grpc-v2"]  # no REST in Kairos
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    # KServe fills in {{.Name}}; the rest is parsed by kairos serve's own parser.
    args = serve_args([a.replace("{{.Name}}", "mlp256") for a in container["args"]])
    assert args.model_dir == Path("/mnt/models") and args.model_name == "mlp256"
    assert port_named(container, "h2c") == args.grpc_port == 8001
    assert container["readinessProbe"]["grpc"]["port"] == args.grpc_port
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(args.metrics_port)
    assert args.drain_delay_seconds > 0


def test_inference_service_uses_the_runtime_and_its_timings() -> None:
    (service,) = documents(KSERVE / "inferenceservice.yaml")
    (runtime,) = documents(RUNTIMES[0])
    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    (container,) = runtime["spec"]["containers"]
    assert port_named(model, "h2c") == port_named(container, "h2c")
    args = serve_args([a.replace("{{.Name}}", "x") for a in container["args"]])
    assert predictor["terminationGracePeriodSeconds"] >= drain_budget(container, args) + 1
    # The HPA and PDB in this folder act on this InferenceService's predictor.
    name = service["metadata"]["name"]
    assert service["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"
    (hpa,) = documents(KSERVE / "hpa.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{name}-predictor"
    (pdb,) = documents(KSERVE / "pdb.yaml")
    assert pdb["spec"]["selector"]["matchLabels"] == {"serving.kserve.io/inferenceservice": name}
