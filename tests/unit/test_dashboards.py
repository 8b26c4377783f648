"""Grafana provisioning and dashboards (grafana/): valid to provision, consistent, and only
metrics that the workers export.

The helpers here (loading the dashboards, Grafana's macro and variable expansion) are also
what tests/integration/test_grafana.py uses to run every SQL query against PostgreSQL and
to parse every PromQL expression with promtool.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "grafana"
DASHBOARDS_DIR = GRAFANA / "dashboards"
DATASOURCES_YML = GRAFANA / "provisioning" / "datasources" / "datasources.yml"
PROVIDERS_YML = GRAFANA / "provisioning" / "dashboards" / "dashboards.yml"
COMPOSE = REPO / "docker-compose.yml"
# Where the compose file mounts grafana/dashboards and grafana/provisioning.
DASHBOARDS_MOUNT = "/var/lib/grafana/dashboards"
PROVISIONING_MOUNT = "/etc/grafana/provisioning"

# Every metric the workers and the lag exporter export (streams/adapters/metrics.py and the
# lag collector): a dashboard that names another one shows nothing.
METRICS: dict[str, str] = {
    "streamsight_events_consumed_total": "counter",
    "streamsight_events_invalid_total": "counter",
    "streamsight_event_errors_total": "counter",
    "streamsight_operation_duration_seconds": "histogram",
    "streamsight_batches_sealed_total": "counter",
    "streamsight_batch_size_events": "histogram",
    "streamsight_batch_age_seconds": "histogram",
    "streamsight_open_batches": "gauge",
    "streamsight_dead_letter_messages_total": "counter",
    "streamsight_ai_requests_total": "counter",
    "streamsight_ai_tokens_total": "counter",
    "streamsight_ai_cost_usd_total": "counter",
    "streamsight_ai_request_duration_seconds": "histogram",
    "streamsight_ai_ratelimit_wait_seconds": "histogram",
    "streamsight_ai_breaker_state": "gauge",
    "streamsight_ai_daily_budget_spent": "gauge",
    "streamsight_ai_daily_budget_usd": "gauge",
    "streamsight_insights_total": "counter",
    "streamsight_sink_rows_total": "counter",
    "streamsight_sink_write_duration_seconds": "histogram",
    "streamsight_partitions_assigned": "gauge",
    "streamsight_consumer_lag_messages": "gauge",
    "streamsight_consumer_lag_seconds": "gauge",
    "streamsight_consumer_group_members": "gauge",
}
_HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")

# Grafana's global variables that the dashboards may use without defining them.
GLOBALS = {"__interval", "__interval_ms", "__rate_interval", "__range", "__range_s",
           "__range_ms", "__dashboard", "__from", "__to", "__org", "__user", "__name"}


# -- loading ----------------------------------------------------------------------------

def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS_DIR.glob("*.json"))


def load_dashboard(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def datasources() -> dict[str, dict[str, Any]]:
    """The provisioned datasources by uid."""
    config = yaml.safe_load(DATASOURCES_YML.read_text())
    return {ds["uid"]: ds for ds in config["datasources"]}


#: Datasource types by the plugin id a datasource variable asks for.
_PLUGINS = {"postgres": "grafana-postgresql-datasource"}


def plugin(datasource_type: str) -> str:
    return _PLUGINS.get(datasource_type, datasource_type)


def source(ref: Mapping[str, Any]) -> str:
    """The datasource variable a panel, target or query variable reads through,
    ``${name}``: named after the provisioned datasource it defaults to."""
    match = re.fullmatch(r"\$\{(\w+)\}", ref["uid"])
    assert match, f"a datasource named by uid instead of through a variable: {ref}"
    return match[1]


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


@dataclass(frozen=True)
class Query:
    """One query of a dashboard: a panel target or a query variable."""

    dashboard: str  # file name
    where: str      # "panel 'Title' A" or "variable $name"
    datasource: str  # the datasource variable, which is the provisioned uid
    text: str        # rawSql or PromQL
    fmt: str         # time_series | table (SQL); "variable" for variable queries

    @property
    def id(self) -> str:
        return f"{self.dashboard}: {self.where}"


def _variable_text(variable: Mapping[str, Any]) -> str:
    query = variable.get("query", "")
    return str(query["query"] if isinstance(query, dict) else query)


def queries(path: Path) -> list[Query]:
    dashboard = load_dashboard(path)
    found = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            found.append(Query(path.name, f"variable ${variable['name']}",
                               source(variable["datasource"]), _variable_text(variable),
                               "variable"))
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            uid = source(target.get("datasource") or panel["datasource"])
            text = target.get("rawSql") if uid == "timescaledb" else target.get("expr")
            found.append(Query(path.name, f"panel {panel['title']!r} {target.get('refId')}",
                               uid, text or "", target.get("format", "time_series")))
    return found


def all_queries(uid: str) -> list[Query]:
    return [q for path in dashboard_files() for q in queries(path) if q.datasource == uid]


# -- Grafana's expansion ----------------------------------------------------------------

# Template variables as Grafana's templateSrv finds them: $name, ${name}, ${name:format},
# [[name]].
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]")
# The SQL macro engine's own pattern (pkg/tsdb/grafana-postgresql-datasource/macros.go):
# a macro's arguments end at the first ')', so they cannot hold parentheses.
_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_seconds(text: str) -> float:
    match = _DURATION.match(text.strip().strip("'"))
    assert match, f"not a Grafana duration: {text!r}"
    return int(match[1]) * _UNIT_SECONDS[match[2]]


def sql_format(values: Sequence[str]) -> str:
    """A multi-value or include-All variable in SQL: quoted, comma-separated."""
    return ",".join("'" + v.replace("'", "''") + "'" for v in values)


def prom_format(values: Sequence[str]) -> str:
    """A multi-value variable in PromQL: one regex alternative per value."""
    escaped = [re.sub(r"([\\.+*?^$()\[\]{}|])", r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def expand_variables(text: str, values: Mapping[str, str]) -> str:
    """Replace the template variables of ``text`` by their formatted ``values``; a
    ``$__macro(`` is left for the macro engine; any other unknown name is an error."""

    def sub(match: re.Match[str]) -> str:
        name = match[1] or match[2] or match[3]
        if name in values:
            return values[name]
        end = match.end()
        if name.startswith("__") and end < len(text) and text[end] == "(":
            return match[0]
        raise KeyError(f"variable ${name} has no value")

    return _VARIABLE.sub(sub, text)


def _rfc3339(ts: datetime) -> str:
    # Go's time.RFC3339Nano in UTC, as the macro engine formats it (no trailing zeros).
    text = ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


def _go_float(value: float) -> str:
    # Go's %v for a float64: 60 not 60.0.
    return str(int(value)) if value == int(value) else repr(value)


def expand_macros(sql: str, time_from: datetime, time_to: datetime, *,
                  timescaledb: bool) -> str:
    """Grafana's PostgreSQL macros, as its macro engine writes them."""

    def evaluate(name: str, args: list[str]) -> str:
        if name == "__time":
            return f'{args[0]} AS "time"'
        if name == "__timeEpoch":
            return f'extract(epoch from {args[0]}) as "time"'
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{_rfc3339(time_from)}' AND '{_rfc3339(time_to)}'"
        if name == "__timeFrom":
            return f"'{_rfc3339(time_from)}'"
        if name == "__timeTo":
            return f"'{_rfc3339(time_to)}'"
        if name == "__timeGroup":
            assert len(args) in (2, 3), f"$__timeGroup needs a column and an interval: {args}"
            seconds = duration_seconds(args[1])
            if timescaledb:
                return f"time_bucket('{seconds:.3f}s',{args[0]})"
            return (f"floor(extract(epoch from {args[0]})/{_go_float(seconds)})"
                    f"*{_go_float(seconds)}")
        if name == "__timeGroupAlias":
            return evaluate("__timeGroup", args) + ' AS "time"'
        raise AssertionError(f"macro ${name} is not one that Grafana's PostgreSQL source has")

    def sub(match: re.Match[str]) -> str:
        name = match[1]
        # As Grafana: $__timeGroup directly followed by ',' is the pre-5.3 aliasing form.
        if name == "__timeGroup" and sql[match.end():match.end() + 1] == ",":
            name = "__timeGroupAlias"
        return evaluate(name, [arg.strip() for arg in match[2].split(",")])

    return _MACRO.sub(sub, sql)


# -- PromQL metric names ----------------------------------------------------------------

_PROM_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_PROM_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_PROM_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_PROM_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                  "and", "or", "unless", "offset", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions,
    aggregations, keywords, label names or inside strings, ranges or durations."""
    text = _PROM_STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)          # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)         # ranges and subqueries
    text = _PROM_GROUPING.sub("", text)
    names = set()
    for match in _PROM_IDENT.finditer(text):
        start, end = match.span()
        before = text[start - 1] if start else " "
        rest = text[end:].lstrip()
        if before.isdigit() or before == ".":      # 1e3, 0.5
            continue
        if rest.startswith("(") or match[0].lower() in _PROM_KEYWORDS:
            continue
        names.add(match[0])
    return names


def label_values_selector(query: str) -> str | None:
    """The series selector of a ``label_values(selector, label)`` variable query."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
    return match[1] if match else None


def known_metric(name: str) -> bool:
    if name in METRICS:
        return True
    for suffix in _HISTOGRAM_SERIES:
        base = name.removesuffix(suffix)
        if base != name and METRICS.get(base) == "histogram":
            return True
    return False


# -- the checks -------------------------------------------------------------------------

def test_datasources_are_provisioned_as_the_dashboards_expect() -> None:
    config = yaml.safe_load(DATASOURCES_YML.read_text())
    assert config["apiVersion"] == 1
    by_uid = datasources()
    assert set(by_uid) == {"timescaledb", "prometheus"}

    pg = by_uid["timescaledb"]
    assert pg["type"] in ("postgres", "grafana-postgresql-datasource")
    assert pg["url"] == "timescaledb:5432"
    assert pg["user"] == "postgres"
    assert pg["jsonData"]["database"] == "streamsight"
    assert pg["jsonData"]["sslmode"] == "disable"
    assert pg["jsonData"]["timescaledb"] is True
    assert pg["jsonData"]["postgresVersion"] == 1600
    # The password only from the environment, and only in the encrypted part.
    assert pg["secureJsonData"]["password"] in ("$POSTGRES_PASSWORD", "${POSTGRES_PASSWORD}")
    assert "password" not in pg and "password" not in pg["jsonData"]

    prom = by_uid["prometheus"]
    assert prom["type"] == "prometheus"
    assert prom["url"] == "http://prometheus:9090"
    assert [uid for uid, ds in by_uid.items() if ds.get("isDefault")] == ["prometheus"]
    assert len({ds["name"] for ds in by_uid.values()}) == len(by_uid)


def test_dashboard_provider_reads_the_mounted_folder() -> None:
    config = yaml.safe_load(PROVIDERS_YML.read_text())
    assert config["apiVersion"] == 1
    [provider] = config["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == "streamsight"
    assert provider["options"]["path"] == DASHBOARDS_MOUNT
    if COMPOSE.exists():
        # The compose file is what puts the files there.
        compose = yaml.safe_load(COMPOSE.read_text())
        mounts = {}
        for volume in compose["services"]["grafana"]["volumes"]:
            parts = volume.split(":")
            if parts[0].startswith("."):
                mounts[(REPO / parts[0]).resolve()] = parts[1]
        assert mounts.get(DASHBOARDS_DIR.resolve()) == DASHBOARDS_MOUNT
        assert mounts.get((GRAFANA / "provisioning").resolve()) == PROVISIONING_MOUNT


def test_the_six_dashboards_exist_with_unique_uids_and_titles() -> None:
    boards = [load_dashboard(path) for path in dashboard_files()]
    uids = [b["uid"] for b in boards]
    titles = [b["title"] for b in boards]
    assert sorted(uids) == sorted(f"streamsight-{name}" for name in
                                  ("overview", "insights", "ai", "performance", "errors",
                                   "lag"))
    assert len(set(titles)) == len(titles)
    for uid in uids:
        assert len(uid) <= 40 and re.fullmatch(r"[a-z0-9-]+", uid)


def _overlaps(a: Mapping[str, int], b: Mapping[str, int]) -> bool:
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_dashboard_is_valid_for_provisioning(path: Path) -> None:
    board = load_dashboard(path)
    provisioned = datasources()
    assert board["title"] and board["uid"]
    assert board["schemaVersion"] == 39
    assert board["id"] is None  # provisioning assigns ids
    assert board["time"] == {"from": "now-6h", "to": "now"}
    assert board["refresh"] == "30s"

    # Datasources through variables, each defaulting to an input that a hand import
    # into any Grafana asks for (provisioned, the variable falls back to the one
    # datasource of its type that is there, the default for Prometheus).
    chosen = {v["name"]: v for v in board["templating"]["list"] if v["type"] == "datasource"}
    assert chosen and set(chosen) <= set(provisioned)
    inputs = {i["name"]: i for i in board["__inputs"]}
    assert set(inputs) == {f"DS_{name.upper()}" for name in chosen}
    for name, variable in chosen.items():
        assert variable["query"] == plugin(provisioned[name]["type"])
        assert variable["current"]["value"] == f"${{DS_{name.upper()}}}"
        wanted = inputs[f"DS_{name.upper()}"]
        assert wanted["type"] == "datasource" and wanted["pluginId"] == variable["query"]
    raw_uids = "|".join(provisioned)
    assert not re.search(f'"uid": "({raw_uids})"', path.read_text())

    all_panels = list(panels(board))
    assert all_panels
    ids = [p["id"] for p in all_panels]
    assert len(set(ids)) == len(ids) and all(isinstance(i, int) for i in ids)
    for i, panel in enumerate(all_panels):
        where = f"{path.name} panel {panel.get('title')!r}"
        assert panel.get("title"), where
        pos = panel["gridPos"]
        assert all(isinstance(pos[k], int) for k in ("x", "y", "w", "h")), where
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, where
        assert pos["y"] >= 0 and pos["h"] > 0, where
        for other in all_panels[i + 1:]:
            assert not _overlaps(pos, other["gridPos"]), f"{where} overlaps {other['title']!r}"
        if panel["type"] == "row":
            continue
        ds = panel["datasource"]
        assert source(ds) in chosen, where
        assert plugin(ds["type"]) == chosen[source(ds)]["query"], where
        targets = panel["targets"]
        assert targets, where
        refs = [t.get("refId") for t in targets]
        assert all(refs) and len(set(refs)) == len(refs), where
        for target in targets:
            assert target.get("datasource", ds) == ds, where
            if source(ds) == "timescaledb":
                assert target["rawQuery"] is True and target["rawSql"].strip(), where
                assert target["editorMode"] == "code", where
                assert target["format"] in ("time_series", "table"), where
            else:
                assert target["expr"].strip(), where

    variables = board.get("templating", {}).get("list", [])
    names = [v["name"] for v in variables]
    assert len(set(names)) == len(names)
    for variable in variables:
        if variable["type"] == "query":
            assert source(variable["datasource"]) in chosen
            assert _variable_text(variable).strip()
        if variable.get("includeAll") and variable["type"] == "query" \
                and source(variable["datasource"]) == "timescaledb":
            # A custom All value would reach SQL unquoted: All must list the values.
            assert not variable.get("allValue"), variable["name"]

    # Every variable a query uses is defined or global; every defined one is used.
    texts = [q.text for q in queries(path)]
    used = {m[1] or m[2] or m[3] for text in texts for m in _VARIABLE.finditer(text)}
    used |= {q.datasource for q in queries(path)}
    macros = {m[1] for text in texts for m in _MACRO.finditer(text)}
    assert used - set(names) - GLOBALS - macros == set()
    assert set(names) - used == set()


def test_promql_names_only_exported_metrics() -> None:
    exprs = all_queries("prometheus")
    assert len(exprs) > 30
    for query in exprs:
        text = query.text
        if query.fmt == "variable":
            selector = label_values_selector(text)
            assert selector, f"{query.id}: only label_values(selector, label) is used"
            text = selector
        names = metric_names(text)
        assert names, f"{query.id}: no metric in {text!r}"
        unknown = {n for n in names if not known_metric(n)}
        assert not unknown, f"{query.id}: {sorted(unknown)} not exported"
        for name in names:
            if METRICS.get(name) == "histogram":
                raise AssertionError(f"{query.id}: histogram {name} without _bucket/_sum/_count")
        counters = {n for n in names if METRICS.get(n) == "counter"}
        for name in counters:
            # A counter alone says nothing: rate() or increase() of it.
            assert re.search(rf"(rate|increase)\(\s*{name}\b", text), f"{query.id}: {name}"


def test_metric_names_finds_names_and_skips_the_rest() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, model) (rate(a_bucket{model=~"x|y"}[5m]))) '
            "/ on(model) group_left sum without (kind) (b_total offset 1h) > bool 1e3")
    assert metric_names(expr) == {"a_bucket", "b_total"}


def test_sql_and_prom_formats_follow_grafana() -> None:
    assert sql_format(["a", "o'b"]) == "'a','o''b'"
    assert prom_format(["a"]) == "a"
    assert prom_format(["gpt-4o", "x.y"]) == "(gpt-4o|x\\\\.y)"
    assert expand_variables("source IN ($source) AND ${route} [[x]]",
                            {"source": "'a'", "route": "'/r'", "x": "1"}) \
        == "source IN ('a') AND '/r' 1"
    with pytest.raises(KeyError):
        expand_variables("$nope", {})


def test_macros_expand_as_grafana_writes_them() -> None:
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    end = start + timedelta(hours=6, microseconds=500000)
    sql = ("SELECT $__timeGroupAlias(t, 1m), $__timeGroup(t, '1h'), x FROM y "
           "WHERE $__timeFilter(t) AND $__timeFrom() < $__timeTo() GROUP BY $__timeGroup(t,5m)")
    plain = expand_macros(sql, start, end, timescaledb=False)
    assert plain == (
        'SELECT floor(extract(epoch from t)/60)*60 AS "time", '
        'floor(extract(epoch from t)/3600)*3600 AS "time", x FROM y '
        "WHERE t BETWEEN '2026-03-01T12:00:00Z' AND '2026-03-01T18:00:00.5Z' "
        "AND '2026-03-01T12:00:00Z' < '2026-03-01T18:00:00.5Z' "
        "GROUP BY floor(extract(epoch from t)/300)*300")
    tsdb = expand_macros(sql, start, end, timescaledb=True)
    assert tsdb.startswith("SELECT time_bucket('60.000s',t) AS \"time\", "
                           "time_bucket('3600.000s',t) AS \"time\", x")
    assert tsdb.endswith("GROUP BY time_bucket('300.000s',t)")
    with pytest.raises(AssertionError):
        expand_macros("$__unknown(x)", start, end, timescaledb=False)
