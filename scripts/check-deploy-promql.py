#!/usr/bin/env python3
"""Checks the PromQL of deploy/ against the metrics PulseHub exports.

Run by scripts/check-deploy.sh. Reads the Grafana dashboard, its
provisioning, the alert rules and docker-compose.yml, and fails when:
- the dashboard is not valid JSON or lacks what Grafana needs (uid, a
  schemaVersion of 39 or more, unique panel ids, panels that do not overlap,
  every query on the provisioned data source uid);
- a query names a metric PulseHub does not export, a label that metric does
  not have, or a label value it never takes (`store="postgresql"`);
- a query groups by a label none of its metrics has;
- a `job` a query names is not a scrape job of prometheus.yml;
- the dashboard provider's folder, or Grafana's home dashboard, is not where
  docker-compose.yml mounts the dashboards.

The names below are those of host/src/telemetry/; a metric renamed there must
be renamed here and in deploy/.
"""

import json
import re
import sys
from pathlib import Path

try:
    import yaml
except ImportError:
    sys.exit(
        "check-deploy: python3 cannot import yaml; install it "
        "(apt-get install -y python3-yaml, or pip install pyyaml)"
    )

# Labels every scraped series gets from Prometheus.
TARGET_LABELS = {"job", "instance"}

# name -> (type, {label: allowed values, or None for any value})
METRICS = {
    "pulsehub_plugin_calls_total": ("counter", {"plugin": None, "version": None}),
    "pulsehub_plugin_events_total": ("counter", {"plugin": None, "version": None}),
    "pulsehub_plugin_errors_total": ("counter", {"plugin": None, "version": None, "kind": None}),
    "pulsehub_plugin_call_duration_seconds": ("histogram", {"plugin": None}),
    "pulsehub_plugin_state": (
        "gauge",
        {"plugin": None, "version": None, "state": {"active", "quarantined"}},
    ),
    "pulsehub_plugin_actions_total": (
        "counter",
        {
            "plugin": None,
            "action": {"load", "replace", "rollback", "remove", "quarantine", "lift", "auto_rollback"},
        },
    ),
    "pulsehub_events_consumed_total": ("counter", {"role": {"enrich", "archive"}, "partition": None}),
    "pulsehub_consumer_lag": ("gauge", {"role": {"enrich", "archive"}, "partition": None}),
    "pulsehub_batch_events": ("histogram", {"role": {"enrich", "archive"}}),
    "pulsehub_commit_duration_seconds": ("histogram", {}),
    "pulsehub_dead_letters_total": ("counter", {"reason": {"bad_event", "plugin_error"}}),
    "pulsehub_store_operation_duration_seconds": (
        "histogram",
        {"store": {"postgres", "redis", "embedded"}, "operation": None},
    ),
    "pulsehub_store_errors_total": (
        "counter",
        {"store": {"postgres", "redis", "embedded"}, "operation": None},
    ),
    "pulsehub_cache_lookups_total": ("counter", {"result": {"hit", "miss"}}),
    "pulsehub_http_requests_total": ("counter", {"route": None, "method": None, "status": None}),
    "pulsehub_http_request_duration_seconds": ("histogram", {"route": None, "method": None}),
    "pulsehub_reconcile_discrepancies": ("gauge", {"store": {"postgres", "redis"}, "attribute": None}),
    "pulsehub_reconcile_checked_profiles": ("gauge", {}),
    "pulsehub_reconcile_last_run_timestamp_seconds": ("gauge", {}),
    "pulsehub_reconcile_runs_total": ("counter", {"outcome": {"done", "failed"}}),
    "pulsehub_destination_messages_sent_total": ("counter", {"destination": None}),
    "pulsehub_destination_attempts_failed_total": ("counter", {"destination": None}),
    "pulsehub_destination_attempts_retried_total": ("counter", {"destination": None}),
    "pulsehub_destination_dead_letters_total": ("counter", {"destination": None}),
    "pulsehub_destination_lag_seconds": ("gauge", {"destination": None}),
    "pulsehub_destination_request_seconds": ("histogram", {"destination": None}),
    # Written by Prometheus itself.
    "up": ("gauge", {}),
    "ALERTS": ("gauge", {"alertname": None, "alertstate": {"pending", "firing"}, "severity": None}),
}

KEYWORDS_WITH_LABELS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = KEYWORDS_WITH_LABELS | {"and", "or", "unless", "offset", "bool", "atan2", "inf", "nan"}

TOKEN = re.compile(
    r"""\s+
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<number>[0-9][0-9.eE+\-]*[a-z]*)
    | (?P<var>\$\{?[A-Za-z_][A-Za-z0-9_]*\}?)
    | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],@])
    """,
    re.VERBOSE,
)


def series_labels():
    """Every series name (histograms as _bucket, _sum, _count) -> labels."""
    out = {}
    for name, (kind, labels) in METRICS.items():
        labels = dict(labels)
        if name != "ALERTS":
            labels.update({label: None for label in TARGET_LABELS})
        if kind == "histogram":
            out[name + "_bucket"] = {**labels, "le": None}
            out[name + "_sum"] = labels
            out[name + "_count"] = labels
        else:
            out[name] = labels
    return out


SERIES = series_labels()


def tokens(expr):
    pos, out = 0, []
    while pos < len(expr):
        match = TOKEN.match(expr, pos)
        if not match:
            raise ValueError(f"cannot read PromQL at {expr[pos:pos + 20]!r}")
        pos = match.end()
        if match.lastgroup:
            out.append((match.lastgroup, match.group(match.lastgroup)))
    return out


def parse(expr):
    """The selectors (metric, [(label, op, value)]) and grouping labels of expr."""
    toks = tokens(expr)
    selectors, grouping = [], []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else None
        if kind == "op" and text == "[":
            while i < len(toks) and toks[i][1] != "]":
                i += 1
        elif kind == "ident" and text in KEYWORDS_WITH_LABELS and nxt == "(":
            i += 2
            while i < len(toks) and toks[i][1] != ")":
                if toks[i][0] == "ident":
                    grouping.append(toks[i][1])
                i += 1
        elif kind == "ident" and text not in KEYWORDS and nxt not in ("(", "by", "without"):
            matchers = []
            if nxt == "{":
                i += 2
                while i < len(toks) and toks[i][1] != "}":
                    if toks[i][0] == "ident":
                        op, value = toks[i + 1][1], toks[i + 2][1][1:-1]
                        matchers.append((toks[i][1], op, value))
                        i += 3
                    else:
                        i += 1
            selectors.append((text, matchers))
        i += 1
    return selectors, grouping


def check_expr(where, expr, jobs, errors):
    try:
        selectors, grouping = parse(expr)
    except (ValueError, IndexError) as error:
        errors.append(f"{where}: {error}: {expr}")
        return
    if not selectors:
        errors.append(f"{where}: names no metric: {expr}")
    known_labels = set()
    for name, matchers in selectors:
        if name not in SERIES:
            errors.append(f"{where}: unknown metric {name}")
            continue
        labels = SERIES[name]
        known_labels |= set(labels)
        for label, op, value in matchers:
            if name == "ALERTS" and label not in labels:
                continue  # alerts carry their rule's labels too
            if label not in labels:
                errors.append(f"{where}: {name} has no label {label!r}")
            elif label == "job" and op == "=" and value not in jobs:
                errors.append(f"{where}: job {value!r} is not a scrape job of prometheus.yml ({sorted(jobs)})")
            elif label == "job" and op == "=~" and not any(re.fullmatch(value, job) for job in jobs):
                errors.append(f"{where}: job=~{value!r} matches no scrape job of prometheus.yml")
            elif op == "=" and labels[label] is not None and value not in labels[label]:
                errors.append(
                    f"{where}: {name}{{{label}={value!r}}}: {label} is one of {sorted(labels[label])}"
                )
    for label in grouping:
        if label not in known_labels:
            errors.append(f"{where}: groups by {label!r}, a label of none of its metrics")


def panels(items):
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def overlaps(a, b):
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def check_dashboard(path, datasource_uid, jobs, errors):
    try:
        dashboard = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        errors.append(f"{path}: not valid JSON: {error}")
        return 0
    if not dashboard.get("uid") or not dashboard.get("title"):
        errors.append(f"{path}: needs a uid and a title")
    if not isinstance(dashboard.get("schemaVersion"), int) or dashboard["schemaVersion"] < 39:
        errors.append(f"{path}: schemaVersion {dashboard.get('schemaVersion')!r}, expected 39 or more")

    def datasource(where, ref):
        if not isinstance(ref, dict) or ref.get("uid") != datasource_uid:
            errors.append(f"{where}: data source {ref!r}, expected uid {datasource_uid!r}")

    count, ids, placed = 0, set(), []
    for panel in panels(dashboard.get("panels", [])):
        where = f"{path.name}: panel {panel.get('id')} {panel.get('title')!r}"
        if panel.get("id") in ids:
            errors.append(f"{where}: panel id used twice")
        ids.add(panel.get("id"))
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in "xywh") or grid["x"] + grid["w"] > 24:
            errors.append(f"{where}: gridPos {grid!r} is not inside the 24 columns")
            continue
        for other_where, other in placed:
            if overlaps(grid, other):
                errors.append(f"{where}: overlaps {other_where}")
        placed.append((where, grid))
        if panel.get("type") == "row":
            continue
        datasource(where, panel.get("datasource"))
        targets = panel.get("targets") or []
        if not targets:
            errors.append(f"{where}: has no query")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            errors.append(f"{where}: refIds {refs} repeat")
        for target in targets:
            datasource(f"{where} {target.get('refId')}", target.get("datasource"))
            check_expr(f"{where} {target.get('refId')}", target.get("expr", ""), jobs, errors)
            count += 1

    for variable in dashboard.get("templating", {}).get("list", []):
        where = f"{path.name}: variable {variable.get('name')!r}"
        datasource(where, variable.get("datasource"))
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        match = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*([A-Za-z_]\w*)\s*\)\s*", query)
        if not match:
            errors.append(f"{where}: expected label_values(METRIC, LABEL), got {query!r}")
            continue
        check_expr(where, match.group(1), jobs, errors)
        name = match.group(1).split("{")[0]
        if match.group(2) not in SERIES.get(name, {}):
            errors.append(f"{where}: {name} has no label {match.group(2)!r}")
        count += 1

    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("builtIn"):
            continue
        where = f"{path.name}: annotation {annotation.get('name')!r}"
        datasource(where, annotation.get("datasource"))
        check_expr(where, annotation.get("expr", ""), jobs, errors)
        count += 1
    return count


def main():
    root = Path(__file__).resolve().parent.parent
    deploy = root / "deploy"
    errors = []

    prometheus = yaml.safe_load((deploy / "prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}

    sources = yaml.safe_load((deploy / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uids = [s.get("uid") for s in sources["datasources"] if s.get("type") == "prometheus"]
    if len(uids) != 1 or not uids[0]:
        sys.exit(f"check-deploy: expected one Prometheus data source with a uid, found {uids}")

    count = 0
    for path in sorted((deploy / "grafana/dashboards").glob("*.json")):
        count += check_dashboard(path, uids[0], jobs, errors)

    rules = yaml.safe_load((deploy / "prometheus/alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            check_expr(f"alerts.yml: {name}", rule["expr"], jobs, errors)
            if rule.get("alert"):
                if rule.get("labels", {}).get("severity") not in ("critical", "warning"):
                    errors.append(f"alerts.yml: {name}: severity label must be critical or warning")
                if not {"summary", "description"} <= set(rule.get("annotations", {})):
                    errors.append(f"alerts.yml: {name}: needs summary and description annotations")
            count += 1

    provider = yaml.safe_load((deploy / "grafana/provisioning/dashboards/pulsehub.yml").read_text())
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    mounts = {
        volume.split(":")[1]: volume.split(":")[0]
        for volume in compose["services"]["grafana"]["volumes"]
    }
    home = compose["services"]["grafana"].get("environment", {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        folder, _, name = home.rpartition("/")
        source = mounts.get(folder)
        if not source or not (root / source / name).is_file():
            errors.append(f"docker-compose.yml: Grafana's home dashboard {home} is not a mounted file of deploy/")
    for entry in provider["providers"]:
        folder = entry["options"]["path"]
        if mounts.get(folder) != "./deploy/grafana/dashboards":
            errors.append(
                f"dashboards provider {entry['name']!r} reads {folder}, "
                "where docker-compose.yml does not mount ./deploy/grafana/dashboards"
            )

    for error in errors:
        print(f"check-deploy: {error}", file=sys.stderr)
    if errors:
        sys.exit(f"check-deploy: {len(errors)} problem(s) in deploy/")
    print(f"check-deploy: {count} PromQL queries use only PulseHub's metrics and labels")


if __name__ == "__main__":
    main()
