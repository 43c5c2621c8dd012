#!/usr/bin/env python3
"""Check that the Grafana dashboard and the alert rules name only metrics roomcast exports.

    check_metric_names.py DASHBOARD.json ALERTS.yml

The dashboard must be valid JSON, every PromQL expression in it (panel targets and template
queries) and in the alert rules may only use the metric names below (histograms with their
_bucket/_sum/_count series; the alert rules may also use Prometheus' own `up`), and the
dashboard must show the families the operations issue asks for. Exit status 1 on a problem.
"""

import json
import re
import sys

# The metrics a roomcast node exports (docs/operations.md keeps the same list).
COUNTERS_GAUGES = {
    "roomcast_connections",
    "roomcast_connections_accepted_total",
    "roomcast_messages_in_total",
    "roomcast_messages_out_total",
    "roomcast_bytes_in_total",
    "roomcast_bytes_out_total",
    "roomcast_errors_total",
    "roomcast_closes_total",
    "roomcast_rate_limited_total",
    "roomcast_slow_consumer_closes_total",
    "roomcast_auth_failures_total",
    "roomcast_rooms",
    "roomcast_bus_up",
    "roomcast_bus_reconnects_total",
    "roomcast_bus_publish_errors_total",
    "roomcast_bus_messages_received_total",
    "roomcast_bus_gap_repairs_total",
    "roomcast_bus_publish_batches_total",
    "roomcast_bus_publishes_batched_total",
    "roomcast_bus_join_batches_total",
    "roomcast_bus_joins_batched_total",
    "roomcast_api_requests_total",
    "roomcast_draining",
}
HISTOGRAMS = {"roomcast_fanout_seconds", "roomcast_bus_delivery_seconds"}
KNOWN = set(COUNTERS_GAUGES)
for h in HISTOGRAMS:
    KNOWN |= {h + "_bucket", h + "_sum", h + "_count"}

# What the dashboard must show (issue 5): one metric of each family at least.
REQUIRED_ON_DASHBOARD = {
    "connections per node": {"roomcast_connections"},
    "messages in/out": {"roomcast_messages_in_total", "roomcast_messages_out_total"},
    "fan-out latency": {"roomcast_fanout_seconds_bucket"},
    "bus state": {"roomcast_bus_up"},
    "bus reconnects": {"roomcast_bus_reconnects_total"},
    "errors by code": {"roomcast_errors_total"},
    "slow-consumer closes": {"roomcast_slow_consumer_closes_total"},
}

PROMQL_WORDS = {
    # aggregations, functions and keywords that may appear as identifiers
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "rate", "irate", "increase", "delta", "idelta",
    "deriv", "histogram_quantile", "clamp_min", "clamp_max", "clamp", "abs", "absent",
    "absent_over_time", "vector", "scalar", "label_replace", "label_join", "avg_over_time",
    "max_over_time", "min_over_time", "sum_over_time", "count_over_time", "last_over_time",
    "changes", "resets", "round", "ceil", "floor", "time", "timestamp", "sort", "sort_desc",
    "predict_linear", "label_values", "query_result", "instance", "le",
}


def strip(expr: str) -> str:
    """Remove what cannot name a metric: strings, label matchers, ranges, grafana variables."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', " ", expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range selectors
    # label lists after by/without/on/ignoring/group_left/group_right
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", " ", expr)  # $__rate_interval, $instance
    return expr


def metric_names(expr: str):
    """Every identifier in EXPR that is neither a PromQL word nor a number or duration."""
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", strip(expr)):
        word = m.group(0)
        if word in PROMQL_WORDS:
            continue
        if re.fullmatch(r"(inf|nan|Inf|NaN|e)", word):
            continue
        names.add(word)
    return names


def dashboard_exprs(node, out):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                out.append(value)
            elif key == "query" and isinstance(value, str):
                out.append(value)
            elif key == "query" and isinstance(value, dict) and isinstance(value.get("query"), str):
                out.append(value["query"])
            else:
                dashboard_exprs(value, out)
    elif isinstance(node, list):
        for value in node:
            dashboard_exprs(value, out)
    return out


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    dash_path, alerts_path = sys.argv[1], sys.argv[2]
    problems = []

    try:
        with open(dash_path) as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        print(f"FAIL {dash_path}: not valid JSON: {e}")
        return 1
    for key in ("title", "uid", "panels"):
        if key not in dash:
            problems.append(f"{dash_path}: no '{key}'")
    exprs = [e for e in dashboard_exprs(dash.get("panels", []), []) if e.strip()]
    exprs += [e for e in dashboard_exprs(dash.get("templating", {}), []) if e.strip() and e != "prometheus"]
    if not exprs:
        problems.append(f"{dash_path}: no PromQL expressions found")
    used = set()
    for expr in exprs:
        names = metric_names(expr)
        used |= names
        for name in sorted(names - KNOWN):
            problems.append(f"{dash_path}: unknown metric '{name}' in: {expr}")
    for what, family in REQUIRED_ON_DASHBOARD.items():
        if not family & used:
            problems.append(f"{dash_path}: no panel for {what} ({', '.join(sorted(family))})")
    seen_ids = set()
    for panel in dash.get("panels", []):
        pid = panel.get("id")
        if pid in seen_ids:
            problems.append(f"{dash_path}: duplicate panel id {pid}")
        seen_ids.add(pid)

    try:
        import yaml  # PyYAML (comes with kubernetes-validate)
    except ImportError:
        print("FAIL PyYAML is missing (pip install pyyaml)")
        return 1
    with open(alerts_path) as f:
        rules = yaml.safe_load(f)
    n_rules = 0
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            n_rules += 1
            for name in sorted(metric_names(rule["expr"]) - KNOWN - {"up"}):
                problems.append(f"{alerts_path}: rule {rule.get('alert')}: unknown metric '{name}'")

    for p in problems:
        print("FAIL " + p)
    if problems:
        return 1
    print(f"ok: {len(exprs)} dashboard expressions and {n_rules} alert rules use only exported metrics "
          f"({len(used & KNOWN)} distinct)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
