"""Monitoring (deploy/components/monitoring/): the alert rules (PrometheusRule) checked and unit-tested with
the real promtool on synthetic series, and the Grafana dashboard's JSON checked: its layout, its variables,
and that every query parses as PromQL and names only metrics that Triton, GenGuard's models or its REST
gateway publish, each from the Service that carries it.

Needs promtool next to this Python or on PATH (`deploy/tools/install-promtool.sh`, which .ci/run runs) and
kubectl (`deploy/tools/install-kubectl.sh`). No cluster. That the genguard_* and the cpu server's nv_*
metrics named here are really published is checked against the real server in tests/test_metrics.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from genguard.triton_models import metrics
from test_deploy import _kubectl, one

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "components" / "monitoring"
RULES = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "genguard-dashboard.json"
HPA = ROOT / "deploy" / "components" / "autoscaling" / "hpa.yaml"
ADAPTER = ROOT / "deploy" / "prometheus-adapter" / "values.yaml"

# Triton 2.51's metric names (its docs, user_guide/metrics.md). A cpu server publishes the first set (the
# real server's scrape is checked in tests/test_metrics.py); the GPU ones need a GPU and --allow-gpu-metrics.
TRITON_CPU_METRICS = {
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
    "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us", "nv_inference_pending_request_count",
    "nv_cpu_utilization", "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes",
}
TRITON_GPU_METRICS = {"nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes",
                      "nv_gpu_power_usage", "nv_gpu_power_limit", "nv_energy_consumption"}
# kube-state-metrics (docs/pod-metrics.md, all STABLE): the alerts on pods use these
KUBE_STATE_METRICS = {"kube_pod_container_status_ready", "kube_pod_container_status_running",
                      "kube_pod_container_status_restarts_total"}


def genguard_metrics() -> set[str]:
    names = set()
    for name, (kind, _, _) in metrics.FAMILIES.items():
        names |= {name + s for s in ("_bucket", "_sum", "_count")} if kind == "HISTOGRAM" else {name}
    return names


def gateway_families() -> dict[str, str]:
    """The REST gateway's metric families (name -> type), from the registry genguard.gateway really builds;
    tests/test_gateway.py checks the running gateway publishes the ones the dashboard and alerts use."""
    from genguard.gateway.metrics import Metrics

    class Idle:
        admitted = forwarding = 0

    return {f.name: f.type for f in Metrics(Idle()).registry.collect() if f.name.startswith("genguard_gateway_")}


def gateway_metrics() -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {name + s for name, kind in gateway_families().items() for s in suffixes[kind]}


# ---------------------------------------------------------------------------------------------------------
# PromQL: metric names in an expression


_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
             "group_right", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions, aggregations,
    keywords, or label names (in braces or in by/without/on/ignoring/group_* lists)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)         # strings
    text = re.sub(r"\{[^}]*\}", " ", text)                   # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)                  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        word, call = match.groups()
        if not call and word.lower() not in _KEYWORDS:
            names.add(word)
    return names


def test_metric_names_reads_promql():
    expr = ('sum by (model) (rate(nv_inference_queue_duration_us{model!="genguard",x=~"a|b"}[5m])) / ignoring (le) '
            'group_left histogram_quantile(0.5, sum by (le) (rate(genguard_is_ai_generated_bucket[1m]))) > 1e3 '
            'and on (pod) up == bool 1')
    assert metric_names(expr) == {"nv_inference_queue_duration_us", "genguard_is_ai_generated_bucket", "up"}


# ---------------------------------------------------------------------------------------------------------
# the dashboard


GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m", "${datasource}": "x",
                     "$namespace": "genguard", "$pod": ".*"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict]:
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out += panel.get("panels", [])  # collapsed rows keep theirs inside
    return out


def dashboard_queries() -> dict[str, str]:
    """'<panel title> / <refId>' -> PromQL with Grafana's variables substituted."""
    out = {}
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            out[f"{panel['title']} / {target['refId']}"] = expr
    return out


def rule_groups() -> list[dict]:
    return yaml.safe_load(RULES.read_text())["spec"]["groups"]


def used_metric_names() -> set[str]:
    """Every metric the dashboard and the alert rules use (tests/test_metrics.py checks the real server
    publishes the genguard_* ones)."""
    names = set()
    for expr in dashboard_queries().values():
        names |= metric_names(expr)
    for group in rule_groups():
        for rule in group["rules"]:
            names |= metric_names(rule["expr"])
    return names


def test_dashboard_layout_and_variables():
    dash = dashboard()
    assert dash["uid"] == "genguard" and dash["title"] and dash["schemaVersion"] >= 36
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    taken = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["w"] >= 1 and pos["h"] >= 1 and 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & taken, f"panel {panel['title']!r} overlaps another"
        taken |= cells
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat", "heatmap", "bargauge", "table", "gauge"}, panel["type"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)) and all(t["expr"].strip() for t in panel["targets"])
        for target in panel["targets"]:
            used = set(re.findall(r"\$\{?(\w+)", target["expr"])) - {"__rate_interval", "__range", "__interval"}
            assert used <= set(variables), (panel["title"], used - set(variables))
    titles = " ".join(p["title"] for p in panels).lower()
    for wanted in ("verdict", "source", "nsfw", "is_ai_generated", "failure", "random weights", "queue time",
                   "compute time", "requests per second", "gpu utilisation", "gpu memory",
                   "gateway requests per second, by route and code", "gateway latency", "429 and 5xx",
                   "admitted and forwarding"):
        assert wanted in titles, f"no panel for {wanted}"


def test_every_dashboard_query_names_a_published_metric():
    known = TRITON_CPU_METRICS | TRITON_GPU_METRICS | genguard_metrics() | gateway_metrics()
    queries = dashboard_queries()
    assert len(queries) >= 20
    used = set()
    for where, expr in queries.items():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= known, f"{where}: unknown metrics {names - known}"
        used |= names
    # every domain family is on the dashboard
    for name, (kind, _, _) in metrics.FAMILIES.items():
        assert any(n == name or n.startswith(name + "_") for n in used), f"{name} is not on the dashboard"
    for name in gateway_families():  # and every family of the REST gateway
        assert any(n == name or n.startswith(name + "_") for n in used), f"{name} is not on the dashboard"


def test_each_query_reads_the_service_that_publishes_its_metric():
    """Triton's and the server's series come from Service genguard-metrics, the gateway's from Service
    genguard (the two ServiceMonitors' targets): a query naming the wrong one would stay empty."""
    queries = dashboard_queries()
    for group in rule_groups():
        for rule in group["rules"]:
            queries[rule["alert"]] = rule["expr"]
    gateway = gateway_metrics()
    for where, expr in queries.items():
        for name in metric_names(expr) - KUBE_STATE_METRICS:
            service = "genguard" if name in gateway else "genguard-metrics"
            for selector in re.findall(r"(?<![\w:])" + re.escape(name) + r"\{([^}]*)\}", expr):
                assert f'service="{service}"' in selector.split(","), (where, name, selector)
            assert re.search(re.escape(name) + r"\{", expr), (where, name, "no selector")


def test_every_dashboard_query_parses(promtool, tmp_path):
    """promtool parses each query (as a recording rule): a syntax error fails here, not in Grafana."""
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(dashboard_queries().values())]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


# ---------------------------------------------------------------------------------------------------------
# the alert rules


_DURATION = r"^([0-9]+(ms|s|m|h|d|w|y))+$"
PROMETHEUS_RULE_SCHEMA = {  # prometheus-operator's PrometheusRule CRD, the part used here, closed to typos
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {"type": "object", "required": ["groups"], "additionalProperties": False, "properties": {
            "groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": {"type": "string", "pattern": _DURATION},
                    "rules": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["expr"], "additionalProperties": False,
                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                        "properties": {
                            "alert": {"type": "string"}, "record": {"type": "string"},
                            "expr": {"type": "string", "minLength": 1},
                            "for": {"type": "string", "pattern": _DURATION},
                            "keep_firing_for": {"type": "string", "pattern": _DURATION},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                        }}},
                }}},
        }}}}

ALERTS = {"GenGuardImageFailureShareHigh", "GenGuardRequestFailures", "GenGuardRandomWeightsInProduction",
          "GenGuardQueueTimeAboveTarget", "GenGuardModelNotReady", "GenGuardServerRestarted",
          "GenGuardGatewayServerErrors", "GenGuardGatewayQueueFull"}


def _promtool() -> str:
    for candidate in (shutil.which("promtool", path=str(Path(sys.executable).parent)), shutil.which("promtool")):
        if candidate and subprocess.run([candidate, "--version"], capture_output=True).returncode == 0:
            return candidate
    pytest.fail("promtool not found next to this Python or on PATH: run deploy/tools/install-promtool.sh")


@pytest.fixture(scope="module")
def promtool() -> str:
    return _promtool()


@pytest.fixture(scope="module")
def production() -> list[dict]:
    proc = subprocess.run([_kubectl(), "kustomize", str(ROOT / "deploy" / "overlays" / "production")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def test_rules_and_dashboard_ship_with_production_only(production):
    rule = one(production, "PrometheusRule", "genguard")
    jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)
    assert rule["metadata"]["namespace"] == "genguard"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())["spec"]
    config_map = one(production, "ConfigMap", "genguard-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["genguard-dashboard.json"]) == dashboard()
    assert len(DASHBOARD.read_bytes()) < 256 * 1024  # kubectl apply's last-applied annotation limit
    for overlay in ("dev", "cpu"):
        proc = subprocess.run([_kubectl(), "kustomize", str(ROOT / "deploy" / "overlays" / overlay)],
                              capture_output=True, text=True, timeout=60)
        kinds = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(proc.stdout) if d}
        assert ("PrometheusRule", "genguard") not in kinds and ("ConfigMap", "genguard-dashboard") not in kinds


def test_the_rule_check_catches_typos():
    good = yaml.safe_load(RULES.read_text())
    good["metadata"]["namespace"] = "genguard"
    jsonschema.validate(good, PROMETHEUS_RULE_SCHEMA)
    for broken in ({"for": "15 minutes"}, {"expresion": "up"}, {"record": "x"}):
        bad = json.loads(json.dumps(good))
        bad["spec"]["groups"][0]["rules"][0].update(broken)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, PROMETHEUS_RULE_SCHEMA)


def test_rules_pass_promtool_check(promtool, tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups()}))
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    alerts = {r["alert"] for g in rule_groups() for r in g["rules"] if "alert" in r}
    assert alerts == ALERTS
    known = TRITON_CPU_METRICS | genguard_metrics() | gateway_metrics() | KUBE_STATE_METRICS
    for group in rule_groups():
        for rule in group["rules"]:
            assert metric_names(rule["expr"]) <= known, (rule["alert"], metric_names(rule["expr"]) - known)
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert {"summary", "description", "runbook"} <= rule["annotations"].keys()
            assert rule["annotations"]["runbook"].endswith(rule["alert"])


def test_rules_name_real_panels_and_runbook_entries():
    """A description's `Dashboard panel "X"` is a panel of the dashboard, and every alert has its entry in
    docs/operating.md's Alerts table (what the runbook annotation points to)."""
    titles = {p["title"] for p in dashboard_panels()}
    alerts_section = (ROOT / "docs" / "operating.md").read_text().split("## Alerts", 1)[1]
    for group in rule_groups():
        for rule in group["rules"]:
            for named in re.findall(r'panel "([^"]+)"', rule["annotations"]["description"]):
                assert named in titles, (rule["alert"], named)
            assert rule["annotations"]["runbook"] == f"docs/operating.md, Alerts: {rule['alert']}"
            assert f"| `{rule['alert']}` |" in alerts_section, rule["alert"]


def test_gateway_alerts_leave_out_the_probes_and_scrapes_only():
    """The gateway alerts' route filter (PromQL regexes are anchored) drops the health routes and /metrics:
    a readiness probe's 503 while the models load is not a client's error; every API route stays counted."""
    from genguard.gateway.routers import detect, health, hive, models, page

    def counted(selector: str, route: str) -> bool:  # the selector's route matchers, as PromQL reads them
        for op, value in re.findall(r'route(!~|!=|=~|=)"([^"]*)"', selector):
            hit = re.fullmatch(value, route) if "~" in op else value == route
            if bool(hit) == op.startswith("!"):
                return False
        return True

    left_out = {r.path for r in health.router.routes}
    assert left_out == {"/v1/health/live", "/v1/health/ready", "/metrics"}
    kept = {r.path for m in (detect, hive, models, page) for r in m.router.routes} | {"unmatched"}
    assert {hive.PATH, detect.PATH, "/v1/models"} <= kept
    selectors = [s for a in ("GenGuardGatewayServerErrors", "GenGuardGatewayQueueFull")
                 for s in re.findall(r"genguard_gateway_requests_total\{([^}]*)\}", _rule(a)["expr"])]
    selectors += [s for title, expr in dashboard_queries().items() if title.startswith("429 and 5xx share")
                  for s in re.findall(r"genguard_gateway_requests_total\{([^}]*)\}", expr)]
    assert len(selectors) == 10
    for selector in selectors:
        assert [r for r in sorted(left_out | kept) if counted(selector, r)] == sorted(kept), selector


def _hpa_target_us() -> float:
    [metric] = yaml.safe_load(HPA.read_text())["spec"]["metrics"]
    return float(metric["pods"]["target"]["averageValue"])


def _rule(name: str) -> dict:
    [rule] = [r for g in rule_groups() for r in g["rules"] if r.get("alert") == name]
    return rule


def test_queue_alert_is_the_autoscalers_metric_over_its_target():
    """Same per-pod query as the prometheus-adapter rule behind the HPA, averaged over pods as the HPA
    does, compared with the HPA's target; for longer than the HPA takes to react."""
    rule = _rule("GenGuardQueueTimeAboveTarget")
    threshold = float(re.search(r"\)\s*>\s*([0-9.e]+)\s*$", rule["expr"])[1])
    assert threshold == _hpa_target_us() == 20000
    [adapter] = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]
    squash = lambda s: re.sub(r"\s+", "", s)
    inner = adapter["metricsQuery"].replace("<<.Series>>", "nv_inference_queue_duration_us")
    inner = inner.replace("<<.LabelMatchers>>,", "").replace("<<.GroupBy>>", "namespace, pod")
    assert squash(inner) in squash(rule["expr"])
    assert squash(rule["expr"]).startswith("avg by(namespace)(") or squash(rule["expr"]).startswith("avgby(namespace)(")
    hpa = yaml.safe_load(HPA.read_text())["spec"]["behavior"]["scaleUp"]
    assert _seconds(rule["for"]) >= hpa["stabilizationWindowSeconds"] + 2 * hpa["policies"][0]["periodSeconds"]


def _seconds(duration: str) -> float:
    return sum(int(n) * {"s": 1, "m": 60, "h": 3600}[u] for n, u in re.findall(r"(\d+)([smh])", duration))


# promtool unit tests: each alert fires on the bad case and stays silent on the healthy one.
_G = 'service="genguard-metrics",namespace="genguard",pod="genguard-server-1"'
_K = 'namespace="genguard",pod="genguard-server-1",container="server"'
_W = 'service="genguard",namespace="genguard",pod="genguard-server-1"'  # the gateway's scrape
_HIVE, _DETECT = "/v1/cv/hive/ai-generated-image-detection", "/v1/detect"
ALERT_TESTS = [
    {   # 1/3 of images refused at 1.5 images/s
        "series": {f'genguard_image_failures_total{{{_G},model="preprocess",reason="corrupt"}}': "0+30x60",
                   f'genguard_image_verdicts_total{{{_G},verdict="ai_generated"}}': "0+60x60"},
        "alert": "GenGuardImageFailureShareHigh", "at": "40m", "labels": {"severity": "warning", "namespace": "genguard"},
    },
    {   # 1 % refused: healthy
        "series": {f'genguard_image_failures_total{{{_G},model="preprocess",reason="corrupt"}}': "0+1x60",
                   f'genguard_image_verdicts_total{{{_G},verdict="ai_generated"}}': "0+99x60"},
        "alert": "GenGuardImageFailureShareHigh", "at": "40m", "labels": None,
    },
    {   # half refused, but 2 images a minute: too little traffic to page
        "series": {f'genguard_image_failures_total{{{_G},model="preprocess",reason="empty"}}': "0+1x60",
                   f'genguard_image_verdicts_total{{{_G},verdict="uncertain"}}': "0+1x60"},
        "alert": "GenGuardImageFailureShareHigh", "at": "40m", "labels": None,
    },
    {   # refusals start at minute 20: not yet 15 minutes over the threshold at minute 30
        "series": {f'genguard_image_failures_total{{{_G},model="validate",reason="truncated"}}': "0x20 0+60x40",
                   f'genguard_image_verdicts_total{{{_G},verdict="ai_generated"}}': "0+60x60"},
        "alert": "GenGuardImageFailureShareHigh", "at": "30m", "labels": None,
    },
    {
        "series": {f'nv_inference_request_failure{{{_G},model="genguard",version="1"}}': "0+10x60",
                   f'nv_inference_request_success{{{_G},model="genguard",version="1"}}': "0+90x60"},
        "alert": "GenGuardRequestFailures", "at": "30m", "labels": {"severity": "critical", "namespace": "genguard"},
    },
    {
        "series": {f'nv_inference_request_failure{{{_G},model="genguard",version="1"}}': "0+1x60",
                   f'nv_inference_request_success{{{_G},model="genguard",version="1"}}': "0+99x60"},
        "alert": "GenGuardRequestFailures", "at": "30m", "labels": None,
    },
    {
        "series": {f'genguard_detector_random_weights{{{_G},detector="sumsub_sd"}}': "1x10",
                   f'genguard_detector_random_weights{{{_G},detector="opensdi_flux"}}': "0x10"},
        "alert": "GenGuardRandomWeightsInProduction", "at": "5m",
        "labels": {"severity": "critical", "namespace": "genguard", "pod": "genguard-server-1",
                   "detector": "sumsub_sd"},
    },
    {
        "series": {f'genguard_detector_random_weights{{{_G},detector="sumsub_sd"}}': "0x10"},
        "alert": "GenGuardRandomWeightsInProduction", "at": "5m", "labels": None,
    },
    {   # 25 ms per request in preprocess (1 request/s); the ensemble's own queue is ignored
        "series": {f'nv_inference_queue_duration_us{{{_G},model="preprocess",version="1"}}': "0+1500000x60",
                   f'nv_inference_request_success{{{_G},model="preprocess",version="1"}}': "0+60x60",
                   f'nv_inference_queue_duration_us{{{_G},model="genguard",version="1"}}': "0+1x60",
                   f'nv_inference_request_success{{{_G},model="genguard",version="1"}}': "0+60x60"},
        "alert": "GenGuardQueueTimeAboveTarget", "at": "30m", "labels": {"severity": "warning", "namespace": "genguard"},
    },
    {   # 10 ms per request: under the target
        "series": {f'nv_inference_queue_duration_us{{{_G},model="preprocess",version="1"}}': "0+600000x60",
                   f'nv_inference_request_success{{{_G},model="preprocess",version="1"}}': "0+60x60",
                   f'nv_inference_queue_duration_us{{{_G},model="genguard",version="1"}}': "0+9000000x60",
                   f'nv_inference_request_success{{{_G},model="genguard",version="1"}}': "0+60x60"},
        "alert": "GenGuardQueueTimeAboveTarget", "at": "30m", "labels": None,
    },
    {
        "series": {f"kube_pod_container_status_ready{{{_K}}}": "0x30", f"kube_pod_container_status_running{{{_K}}}": "1x30"},
        "alert": "GenGuardModelNotReady", "at": "20m",
        "labels": {"severity": "critical", "namespace": "genguard", "pod": "genguard-server-1"},
    },
    {   # still in its init containers (building engines): not running, so not this alert
        "series": {f"kube_pod_container_status_ready{{{_K}}}": "0x30", f"kube_pod_container_status_running{{{_K}}}": "0x30"},
        "alert": "GenGuardModelNotReady", "at": "20m", "labels": None,
    },
    {
        "series": {f"kube_pod_container_status_restarts_total{{{_K}}}": "0x10 1x20"},
        "alert": "GenGuardServerRestarted", "at": "15m",
        "labels": {"severity": "warning", "namespace": "genguard", "pod": "genguard-server-1", "container": "server"},
    },
    {
        "series": {f"kube_pod_container_status_restarts_total{{{_K}}}": "3x40"},
        "alert": "GenGuardServerRestarted", "at": "30m", "labels": None,
    },
    {   # 10 % of API requests answered 503 at 100 requests a minute
        "series": {f'genguard_gateway_requests_total{{{_W},route="{_HIVE}",code="200"}}': "0+90x60",
                   f'genguard_gateway_requests_total{{{_W},route="{_HIVE}",code="503"}}': "0+10x60"},
        "alert": "GenGuardGatewayServerErrors", "at": "30m", "labels": {"severity": "critical", "namespace": "genguard"},
    },
    {   # the readiness probe answers 503 every 5 s while the models load; the API itself is fine
        "series": {f'genguard_gateway_requests_total{{{_W},route="/v1/health/ready",code="503"}}': "0+12x60",
                   f'genguard_gateway_requests_total{{{_W},route="/metrics",code="200"}}': "0+4x60",
                   f'genguard_gateway_requests_total{{{_W},route="{_DETECT}",code="200"}}': "0+20x60",
                   f'genguard_gateway_requests_total{{{_W},route="{_DETECT}",code="504"}}': "0+0x60"},
        "alert": "GenGuardGatewayServerErrors", "at": "30m", "labels": None,
    },
    {   # half the requests fail, but 2 requests a minute: too little traffic to page
        "series": {f'genguard_gateway_requests_total{{{_W},route="{_HIVE}",code="200"}}': "0+1x60",
                   f'genguard_gateway_requests_total{{{_W},route="{_HIVE}",code="502"}}': "0+1x60"},
        "alert": "GenGuardGatewayServerErrors", "at": "30m", "labels": None,
    },
    {   # a third of API requests turned away with 429
        "series": {f'genguard_gateway_requests_total{{{_W},route="{_DETECT}",code="200"}}': "0+60x60",
                   f'genguard_gateway_requests_total{{{_W},route="{_DETECT}",code="429"}}': "0+30x60"},
        "alert": "GenGuardGatewayQueueFull", "at": "40m", "labels": {"severity": "warning", "namespace": "genguard"},
    },
    {   # 5 % turned away: clients retry, under the line
        "series": {f'genguard_gateway_requests_total{{{_W},route="{_DETECT}",code="200"}}': "0+95x60",
                   f'genguard_gateway_requests_total{{{_W},route="{_DETECT}",code="429"}}': "0+5x60"},
        "alert": "GenGuardGatewayQueueFull", "at": "40m", "labels": None,
    },
]


def test_alerts_fire_on_the_bad_case_only(promtool, tmp_path):
    groups = json.loads(json.dumps(rule_groups()))
    for group in groups:  # annotations are checked by `promtool check rules`; unit tests compare labels
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    tests = []
    for case in ALERT_TESTS:
        expected = [{"exp_labels": case["labels"]}] if case["labels"] else []
        tests.append({"interval": "1m",
                      "input_series": [{"series": s, "values": v} for s, v in case["series"].items()],
                      "alert_rule_test": [{"eval_time": case["at"], "alertname": case["alert"],
                                           "exp_alerts": expected}]})
    assert {c["alert"] for c in ALERT_TESTS if c["labels"]} == ALERTS
    assert {c["alert"] for c in ALERT_TESTS if not c["labels"]} == ALERTS
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
                                                         "tests": tests}))
    run = subprocess.run([promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
