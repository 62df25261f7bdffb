"""deploy/grafana/relay.json: every PromQL expression parses, and every metric it names
is one the relay exposes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest

from relay.metrics import ChannelCollector, Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "relay.json"
_VARIABLE = re.compile(r"\$\{?(\w+)(?::\w+)?\}?")
_DURATIONS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _substitute(expr: str) -> str:
    return _VARIABLE.sub(lambda m: _DURATIONS.get(m.group(1), "x"), expr)


def _metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(_substitute(expr)), visit)
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


@pytest.fixture(scope="module")
def exposed() -> set[str]:
    return Metrics().names()


def _exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


def test_every_expression_parses_and_names_only_exposed_metrics(
    dashboard: dict[str, Any], exposed: set[str]
) -> None:
    exprs = _exprs(dashboard)
    assert len(exprs) >= 30
    unknown = {
        (title, name)
        for title, expr in exprs
        for name in _metric_names(expr)
        if name not in exposed
    }
    assert unknown == set()


def test_template_variables_filter_every_query_by_namespace_and_pod(
    dashboard: dict[str, Any], exposed: set[str]
) -> None:
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "pod"} <= set(variables)
    for name in ("job", "namespace", "pod"):
        query = variables[name]["query"]["query"]
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
        assert match is not None
        assert match.group(2) == name
        assert _metric_names(match.group(1)) <= exposed
    for title, expr in _exprs(dashboard):
        if _metric_names(expr) - {"vector"}:
            assert 'namespace=~"$namespace"' in expr, title
            assert 'pod=~"$pod"' in expr, title


def test_the_dashboard_shows_what_the_issue_lists(dashboard: dict[str, Any]) -> None:
    named = {name for _, expr in _exprs(dashboard) for name in _metric_names(expr)}
    for metric in (
        "relay_connections",
        "relay_subscriptions",
        "relay_frames_delivered_total",
        "relay_bytes_delivered_total",
        "relay_delivery_latency_seconds_bucket",
        "relay_ingest_lag_seconds_bucket",
        "relay_slow_consumer_closes_total",
        "relay_connections_closed_total",
        "relay_source_gaps_total",
        "relay_source_resyncs_total",
        "relay_source_up",
        "relay_redis_reconnects_total",
        "relay_event_loop_lag_seconds_bucket",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ):
        assert metric in named, metric
    exprs = " ".join(expr for _, expr in _exprs(dashboard))
    assert "histogram_quantile(0.5, sum by (le) (rate(relay_delivery_latency" in exprs
    assert "histogram_quantile(0.99, sum by (le) (rate(relay_delivery_latency" in exprs


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    taken: set[tuple[int, int]] = set()
    for panel in _panels(dashboard["panels"]):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, panel["title"]
        taken |= cells


def test_the_per_channel_series_are_opt_in() -> None:
    with_channels = Metrics()
    with_channels.registry.register(ChannelCollector(list, 5))
    assert "relay_channel_seq" in with_channels.names()
    assert "relay_channel_seq" not in Metrics().names()
