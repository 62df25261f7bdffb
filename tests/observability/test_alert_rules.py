"""deploy/prometheus/relay-rules.yaml: promtool checks the rules and runs their unit tests
(relay-rules.test.yaml); every metric an alert reads is one the relay exposes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from relay.metrics import Metrics

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = RULES_DIR / "relay-rules.yaml"
REQUIRED_ALERTS = {
    "RelayIngestStalled",
    "RelayDeliveryLatencyHigh",
    "RelaySlowConsumersSpiking",
    "RelayNotReady",
    "RelayRedisUnreachable",
}


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found: apt-get install -y --no-install-recommends prometheus")
    return promtool


def _rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def test_promtool_check_rules() -> None:
    done = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], capture_output=True, timeout=60
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


def test_promtool_test_rules() -> None:
    done = subprocess.run(
        [_promtool(), "test", "rules", "relay-rules.test.yaml"],
        cwd=RULES_DIR,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


def test_every_alert_has_a_runbook_and_reads_exposed_metrics() -> None:
    rules = _rules()
    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    exposed = Metrics().names()
    for rule in rules:
        annotations = rule["annotations"]
        assert annotations["summary"], rule["alert"]
        assert annotations["description"], rule["alert"]
        assert len(annotations["runbook"].splitlines()) >= 2, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        names: set[str] = set()

        def visit(node: Any, names: set[str] = names) -> None:
            if isinstance(node, promql_parser.VectorSelector) and node.name:
                names.add(node.name)

        promql_parser.walk(promql_parser.parse(rule["expr"]), visit)
        assert names, rule["alert"]
        assert names <= exposed, (rule["alert"], names - exposed)


def test_every_alert_is_unit_tested() -> None:
    tests = yaml.safe_load((RULES_DIR / "relay-rules.test.yaml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert {rule["alert"] for rule in _rules()} == tested == fired
