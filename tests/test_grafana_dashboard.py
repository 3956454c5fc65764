"""k8s/monitoring/grafana-dashboard.json, the INVO network's Grafana dashboard: it parses, every
panel asks the `${datasource}` variable's Prometheus, and every metric its queries name is one the
processes expose (services/common/metrics.py's REGISTRY, as Prometheus sees it: a counter with
`_total`, a histogram as `_bucket`, `_sum` and `_count`), so a renamed metric cannot leave a panel
silently empty. The name check is shown to catch a name that is none."""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import pytest

from services.common import metrics

DASHBOARD = pathlib.Path(__file__).resolve().parent.parent / "k8s" / "monitoring" / "grafana-dashboard.json"
DATASOURCE = "${datasource}"

# PromQL words that are not metric names: operators, modifiers, aggregation clauses.
KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"inf", "nan", "atan2"}
)
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
IDENTIFIER = re.compile(r"(?<![\w.$])[A-Za-z_:][\w:]*")


def exposed_names(registry: Any = metrics.REGISTRY) -> frozenset[str]:
    """Every series name the registry exposes, whether or not it has a sample yet (a labelled
    metric has none until it is first counted)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}
    names = set()
    for family in registry.collect():
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return frozenset(names)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left once strings (label values),
    label matchers, ranges, grouping clauses, Grafana's variables, function calls and keywords are
    taken out."""
    text = STRING.sub('""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges and subqueries: [5m], [$__rate_interval]
    text = GROUPING.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana's variables outside strings
    names = set()
    for match in IDENTIFIER.finditer(text):
        word = match.group()
        if word.lower() in KEYWORDS or re.match(r"\s*\(", text[match.end() :]):
            continue  # a keyword, or a function: sum(, rate(, histogram_quantile(, label_replace(
        names.add(word)
    return names


def variable_metric_names(query: str) -> set[str]:
    """The metric a template variable's query reads: `label_values(<metric>{...}, <label>)`, or
    `query_result(<expr>)`, or none (`label_values(<label>)`, `label_names()`)."""
    found = re.fullmatch(r"\s*label_values\(\s*([A-Za-z_:][\w:]*)\s*(\{.*\})?\s*,\s*\w+\s*\)\s*", query)
    if found:
        return {found.group(1)}
    found = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.DOTALL)
    return metric_names(found.group(1)) if found else set()


def unknown_metric_names(exprs: list[str], known: frozenset[str]) -> set[str]:
    """The names the expressions use that no INVO process exposes."""
    return {name for expr in exprs for name in metric_names(expr)} - known


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows too."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(dashboard) for t in p.get("targets", []) if "expr" in t]


def test_the_dashboard_parses_and_has_its_variables() -> None:
    dashboard = load()
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "pod"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == DATASOURCE
    # Every query is scoped by them.
    for expr in exprs(dashboard):
        assert 'namespace="$namespace"' in expr and 'pod=~"$pod"' in expr, expr


def test_every_panel_has_a_title_the_datasource_and_a_unique_id() -> None:
    dashboard = load()
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), ids
    for panel in panels(dashboard):
        assert panel.get("title"), panel
        assert panel.get("datasource", {}).get("uid") == DATASOURCE, panel["title"]
        assert panel["datasource"].get("type") == "prometheus", panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
        if panel["type"] != "row":
            assert panel.get("targets"), panel["title"]


def test_every_metric_the_dashboard_reads_is_one_the_processes_expose() -> None:
    dashboard = load()
    known = exposed_names()
    used = {name for expr in exprs(dashboard) for name in metric_names(expr)}
    assert unknown_metric_names(exprs(dashboard), known) == set()
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"] if isinstance(variable["query"], str) else variable["query"]["query"]
            assert variable_metric_names(query), query
            assert variable_metric_names(query) <= known, query
    # And it reads every INVO metric there is (a new one gets a panel), plus the processes' own.
    invo = {family.name for family in metrics.REGISTRY.collect() if family.name.startswith("invo_")}
    assert {name for name in invo if not any(u.startswith(name) for u in used)} == set()
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= used


@pytest.mark.parametrize(
    ("expr", "unknown"),
    [
        ("sum(rate(invo_made_up_total[5m]))", {"invo_made_up_total"}),
        # A counter is exposed with `_total`, a histogram's quantiles need `_bucket`, a gauge has neither.
        ('sum by (route) (rate(invo_http_requests{pod=~"$pod"}[$__rate_interval]))', {"invo_http_requests"}),
        ("histogram_quantile(0.99, sum by (le) (rate(invo_rpc_duration_seconds[5m])))", {"invo_rpc_duration_seconds"}),
        ("max(invo_webhook_backlog_bucket) or vector(0)", {"invo_webhook_backlog_bucket"}),
        ("invo_payouts / on (pod) group_left process_open_fd", {"process_open_fd"}),
    ],
)
def test_the_name_check_reports_a_name_that_is_none(expr: str, unknown: set[str]) -> None:
    assert unknown_metric_names([expr], exposed_names()) == unknown


def test_the_name_check_reads_promql() -> None:
    expr = (
        'histogram_quantile(0.5, sum by (le, service) (label_replace(rate(invo_rpc_duration_seconds_bucket{code!="OK",'
        ' pod=~"$pod"}[$__rate_interval] offset 1h), "service", "$1", "pod", "(.+)-[^-]+-[^-]+")))'
        " / ignoring (x) max without (pod) (process_max_fds) > bool 1e3"
    )
    assert metric_names(expr) == {"invo_rpc_duration_seconds_bucket", "process_max_fds"}
    assert variable_metric_names('label_values(invo_outbox_lag_seconds{namespace="$namespace"}, pod)') == {
        "invo_outbox_lag_seconds"
    }
    assert variable_metric_names("label_values(namespace)") == set()
    assert "invo_http_requests_total" in exposed_names() and "invo_http_requests" not in exposed_names()
    assert {"invo_ledger_batch_ops_bucket", "invo_ledger_batch_ops_count"} <= exposed_names()
