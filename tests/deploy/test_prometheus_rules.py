"""deploy/prometheus/: promtool checks the config and rules and runs the rule unit tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from kairos_testing.prometheus import binary

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))


def promtool(*args: str) -> str:
    done = subprocess.run([binary("promtool"), *args], capture_output=True, text=True,
                          timeout=120, cwd=PROMETHEUS_DIR)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_check_config() -> None:
    out = promtool("check", "config", "prometheus.yml")
    assert f"{len(RULE_FILES)} rule files found" in out


def test_check_rules() -> None:
    assert RULE_FILES
    promtool("check", "rules", *map(str, RULE_FILES))


def test_rule_unit_tests() -> None:
    assert TEST_FILES
    promtool("test", "rules", *map(str, TEST_FILES))


def test_every_alert_and_recording_rule_is_unit_tested() -> None:
    rules = [rule for path in RULE_FILES
             for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]
    alerts = {rule["alert"] for rule in rules if "alert" in rule}
    tests = [test for path in TEST_FILES for test in yaml.safe_load(path.read_text())["tests"]]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
             if case["exp_alerts"]}
    assert alerts - fired == set(), "alerts never shown firing in deploy/prometheus/tests"
    # Every recording rule is checked directly or through an alert that reads it.
    tested_text = "\n".join(path.read_text() for path in TEST_FILES)
    alert_text = "\n".join(rule["expr"] for rule in rules if "alert" in rule)
    records = {rule["record"] for rule in rules if "record" in rule}
    untested = {name for name in records if name not in tested_text and name not in alert_text}
    assert untested == set()
