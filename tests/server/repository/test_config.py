"""Model config files: defaults, YAML and TOML, and errors that name the problem."""

from __future__ import annotations

import re

import pytest
from kairos.server.repository.config import (
    ConfigError,
    VersionPolicy,
    load_settings,
    parse_settings,
)


def test_defaults_without_a_config_file(tmp_path):
    settings = load_settings(tmp_path)
    assert settings.max_batch_size is None
    assert settings.providers == ["CPUExecutionProvider"]
    assert settings.scheduling.policy == "slo"


def test_yaml_and_toml(tmp_path):
    (tmp_path / "config.yaml").write_text(
        "max_batch_size: 8\nslo_ms: 5\nscheduling:\n  policy: fixed\n  max_queue_delay_ms: 2\n"
    )
    settings = load_settings(tmp_path)
    assert (settings.max_batch_size, settings.slo_ms) == (8, 5)
    assert settings.scheduling.policy == "fixed"
    assert settings.scheduling.max_queue_delay_ms == 2.0
    (tmp_path / "config.yaml").unlink()
    (tmp_path / "config.toml").write_text('intra_op_threads = 2\nversion_policy = "all"\n')
    settings = load_settings(tmp_path)
    assert settings.intra_op_threads == 2 and settings.version_policy.kind == "all"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"max_batch_sise": 8}, "unknown setting 'max_batch_sise'"),
        ({"max_batch_size": -1}, "max_batch_size"),
        ({"slo_ms": 0}, "slo_ms"),
        ({"graph_optimization": "max"}, "graph_optimization"),
        ({"intra_op_threads": "two"}, "'intra_op_threads' must be int"),
        ({"scheduling": {"policy": "greedy"}}, "scheduling.policy"),
        ({"scheduling": {"busy_hold_ms": -1}}, "busy_hold_ms must be >= 0"),
        ({"scheduling": {"latency_quantile": 0.2}}, "latency_quantile"),
        ({"version_policy": {"latest": 0}}, "version_policy"),
        ({"providers": "CPUExecutionProvider"}, "providers"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_settings(data, "m/config.yaml")


def test_unparseable_file_names_the_file(tmp_path):
    (tmp_path / "config.yaml").write_text("max_batch_size: [unclosed\n")
    with pytest.raises(ConfigError, match="config.yaml: cannot parse"):
        load_settings(tmp_path)


def test_version_policies_select_versions():
    on_disk = [3, 1, 2]
    assert VersionPolicy().select(on_disk) == [3]
    assert VersionPolicy(kind="latest", latest=2).select(on_disk) == [2, 3]
    assert VersionPolicy(kind="all").select(on_disk) == [1, 2, 3]
    assert VersionPolicy(kind="specific", specific=[1, 7]).select(on_disk) == [1]


def test_list_settings_with_a_default_factory_parse():
    """preferred_batch_sizes (a default_factory list) was refused as '_MISSING_TYPE'."""
    assert parse_settings({"scheduling": {"preferred_batch_sizes": [8, 16]}}).scheduling \
        .preferred_batch_sizes == [8, 16]


def test_a_model_group_is_read_with_its_members():
    from kairos.server.repository.config import parse_settings

    settings = parse_settings({"variants": {
        "reference": "fp32", "accuracy_budget": 0.01,
        "members": {"int8": {"model": "m-int8"}, "pruned": {"model": "m-pruned", "accuracy": 0.97}}}})
    group = settings.variants
    assert (group.reference, group.accuracy_budget) == ("fp32", 0.01)
    assert [(m.name, m.model, m.accuracy) for m in group.members] == [
        ("int8", "m-int8", None), ("pruned", "m-pruned", 0.97)]
    assert parse_settings({}).variants is None


@pytest.mark.parametrize("variants,message", [
    ("int8", "must be a mapping"),
    ({"members": {}}, "members must map"),
    ({"members": {"a": {"model": "x"}}, "accuracy_budget": 2}, "accuracy_budget must be a number in [0, 1]"),
    ({"members": {"a": {"model": "x", "accuracy": "high"}}}, "accuracy must be a number"),
    ({"members": {"a": {"path": "x"}}}, "needs model"),
    ({"members": {"a": {"model": "x", "speed": 2}}}, "known settings are model and accuracy"),
    ({"members": {"reference": {"model": "x"}}}, "has the reference's name"),
    ({"members": {"a": {"model": "x"}}, "budget": 0.1}, "unknown setting 'budget'"),
])
def test_a_bad_model_group_is_named(variants, message):
    from kairos.server.repository.config import ConfigError, parse_settings

    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_settings({"variants": variants}, "m/config.yaml")
