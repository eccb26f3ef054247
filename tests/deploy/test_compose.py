"""docker-compose.yml and Dockerfile, checked without a container engine.

The compose file must validate against the Compose Specification's JSON schema
(vendored in deploy/compose-spec.json), and everything it builds from or mounts
must exist and agree with the configs inside the containers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def bind_mounts(service: dict) -> dict[str, Path]:
    """{container path: host path} of a service's bind mounts (named volumes left out)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (ROOT / source).resolve()
    return mounts


def test_validates_against_the_compose_spec() -> None:
    schema = json.loads((ROOT / "deploy" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(COMPOSE)]
    assert errors == []
    # The schema is strict enough to catch a typo.
    broken = {**COMPOSE, "services": {**SERVICES, "kairos": {**SERVICES["kairos"], "portz": []}}}
    assert not validator.is_valid(broken)


def test_services() -> None:
    assert {"kairos", "prometheus", "grafana"} <= set(SERVICES)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_mounted_file_exists(name: str) -> None:
    for target, source in bind_mounts(SERVICES[name]).items():
        assert source.exists(), f"{name}: {source} (mounted at {target}) is missing"


def test_kairos_is_built_from_the_dockerfile() -> None:
    build = SERVICES["kairos"]["build"]
    context = (ROOT / build["context"]).resolve()
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    assert dockerfile.is_file()
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (context / source).exists(), f"Dockerfile copies missing {source}"
    # Prometheus scrapes the port the image serves metrics on.
    text = dockerfile.read_text()
    metrics_port = re.search(r'"--metrics-port", "(\d+)"', text).group(1)
    assert metrics_port in re.search(r"EXPOSE (.*)", text).group(1).split()
    prometheus_config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [t for job in prometheus_config["scrape_configs"] if job["job_name"] == "kairos"
               for group in job["static_configs"] for t in group["targets"]]
    assert targets == [f"kairos:{metrics_port}"]


def test_prometheus_container_sees_config_and_rules() -> None:
    service = SERVICES["prometheus"]
    mounts = bind_mounts(service)
    config_arg = next(a for a in service["command"] if a.startswith("--config.file="))
    config_path = config_arg.split("=", 1)[1]
    config = yaml.safe_load(mounts[config_path].read_text())
    # rule_files resolve against the config's folder inside the container.
    for pattern in config["rule_files"]:
        folder, glob = str(Path(config_path).parent / pattern).rsplit("/", 1)
        assert folder in mounts, f"{folder} is not mounted"
        assert list(mounts[folder].glob(glob)), f"no rule files match {pattern}"


def test_grafana_is_provisioned_and_opens_on_the_dashboard() -> None:
    service = SERVICES["grafana"]
    mounts = bind_mounts(service)
    provisioning = mounts["/etc/grafana/provisioning"]
    providers = yaml.safe_load((provisioning / "dashboards" / "kairos.yml").read_text())["providers"]
    dashboards_dir = providers[0]["options"]["path"]
    assert dashboards_dir in mounts
    home = service["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_dir + "/")
    assert (mounts[dashboards_dir] / Path(home).name).is_file()
    # The datasource points at the prometheus service; the dashboard defaults to its uid.
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    source = datasource["datasources"][0]
    assert source["url"] == "http://prometheus:9090"
    assert "9090:9090" in SERVICES["prometheus"]["ports"]
    dashboard = json.loads((mounts[dashboards_dir] / Path(home).name).read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["type"] == "datasource")
    assert variable["current"]["value"] == source["uid"]
