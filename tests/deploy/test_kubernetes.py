"""The Kubernetes manifests (deploy/kubernetes), rendered with `kubectl kustomize` and checked offline:
the core objects against the Kubernetes API's schemas (kubernetes-validate, strict), the custom resources
(KEDA, Prometheus Operator, KServe) for the fields they need, and all of them against the service they run:
its routes, port, settings, metrics, drain, and the image's user and targets. Nothing is applied to a
cluster here.

kubectl 1.27+ (for its kustomize v5) comes from the system or from scripts/setup-dev.sh; without it these
tests skip with the reason, except where MVIT_REQUIRE_KUBECTL=1 (CI), where they fail.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sysconfig
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.api import create_app
from app.api.auth import open_paths
from app.config import ENVIRONMENT_ONLY, ServerSettings
from app.metrics import Metrics
from scripts._dockerfile import read_stages
from tests.support import ROOT, exported_metric_names

KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("edge", "cluster", "cluster-hpa", "gpu")
# The KServe predictor (custom resource), and its GPU variant: kustomizations outside overlays/.
KSERVE_SOURCES = ("kserve", "kserve-gpu")
SOURCES = ("edge", "cluster", "gpu", *KSERVE_SOURCES)  # the pods: cluster-hpa's is cluster's
GPU_SOURCES = ("gpu", "kserve-gpu")
# The oldest Kubernetes these manifests are written for, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30", "1.37")
CUSTOM_KINDS = {"ScaledObject": "keda.sh/v1alpha1", "ServiceMonitor": "monitoring.coreos.com/v1"}
IMAGE = "mobilevitv2-serve"
SERVER = "mvit"  # the serving container of the Deployment
TOKENS_SECRET = "mvit-api-tokens"  # created out of band (docs/deployment.md), never rendered
STAGES = read_stages(ROOT / "Dockerfile")
# The predictor fields that are KServe's own (ComponentExtensionSpec); the rest is a PodSpec.
KSERVE_EXTENSION_FIELDS = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "scaleMetricType"}


def kubectl_path() -> str | None:
    """kubectl from this Python's scripts folder (where setup-dev.sh installs it) or else the PATH."""
    return shutil.which("kubectl", path=os.pathsep.join([sysconfig.get_path("scripts"), os.environ["PATH"]]))


@functools.cache
def kubectl() -> str | None:
    path = kubectl_path()
    if path is None:
        return None
    version = subprocess.run([path, "version", "--client"], capture_output=True, text=True, timeout=60)
    found = re.search(r"Kustomize Version: v(\d+)", version.stdout)
    return path if found and int(found.group(1)) >= 5 else None


@functools.cache
def rendered(overlay: str) -> list[dict[str, Any]]:
    path = kubectl()
    if path is None:
        problem = f"kubectl with kustomize v5 not found ({kubectl_path() or 'none on the PATH'})"
        if os.environ.get("MVIT_REQUIRE_KUBECTL") == "1":
            pytest.fail(f"{problem} (MVIT_REQUIRE_KUBECTL=1; scripts/setup-dev.sh installs it)")
        pytest.skip(f"{problem}; scripts/setup-dev.sh installs it")
    folder = KUBERNETES / overlay if overlay in KSERVE_SOURCES else KUBERNETES / "overlays" / overlay
    out = subprocess.run(
        [path, "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [obj for obj in yaml.safe_load_all(out.stdout) if obj]


def only(overlay: str, kind: str) -> dict[str, Any]:
    (obj,) = [obj for obj in rendered(overlay) if obj["kind"] == kind]
    return obj


def kinds(overlay: str) -> list[str]:
    return [obj["kind"] for obj in rendered(overlay)]


def pod_spec(source: str) -> dict[str, Any]:
    """The pod of an overlay's Deployment, or of a KServe predictor."""
    if source in KSERVE_SOURCES:
        predictor = only(source, "InferenceService")["spec"]["predictor"]
        return {k: v for k, v in predictor.items() if k not in KSERVE_EXTENSION_FIELDS}
    return only(source, "Deployment")["spec"]["template"]["spec"]


def server(source: str) -> dict[str, Any]:
    name = "kserve-container" if source in KSERVE_SOURCES else SERVER
    (container,) = [c for c in pod_spec(source)["containers"] if c["name"] == name]
    return container


def containers(source: str) -> list[dict[str, Any]]:
    spec = pod_spec(source)
    return [*spec.get("initContainers", []), *spec["containers"]]


def environment(source: str, container: dict[str, Any]) -> dict[str, str | None]:
    """The container's variables: its ConfigMap's, then its own (None: set from a field or resource)."""
    values: dict[str, str | None] = {}
    for ref in container.get("envFrom", []):
        name = ref["configMapRef"]["name"]
        (config,) = [
            o for o in rendered(source) if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name
        ]
        values.update(config["data"])
    for var in container.get("env", []):
        values[var["name"]] = var.get("value")
    return values


class ManifestSettings(ServerSettings):
    """ServerSettings from the values given alone, not from this test process's own MVIT_* variables."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: Any,
        init_settings: Any,
        env_settings: Any,
        dotenv_settings: Any,
        file_secret_settings: Any,
    ) -> tuple[Any, ...]:
        return (init_settings,)


def settings_of(source: str, container: dict[str, Any]) -> ServerSettings:
    """What the service makes of the container's MVIT_* variables (its image's ENV underneath)."""
    env = {**STAGES[container["image"].partition(":")[2]].env, **environment(source, container)}
    values = {k.removeprefix("MVIT_").lower(): v for k, v in env.items() if k.startswith("MVIT_") and v}
    return ManifestSettings(**values)


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number


@functools.cache
def app_routes() -> dict[str, str]:
    """Path -> summary of every route of the app (created, not started: no model loads)."""
    app = create_app(ManifestSettings())
    return {route.path: getattr(route, "summary", None) or "" for route in app.routes}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_objects_the_kubernetes_api_accepts(overlay: str, version: str) -> None:
    for obj in rendered(overlay):
        if obj["kind"] in CUSTOM_KINDS:
            assert obj["apiVersion"] == CUSTOM_KINDS[obj["kind"]]
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{overlay}: {obj['kind']}/{obj['metadata']['name']} at {path}: {exc.message}")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("source", KSERVE_SOURCES)
def test_the_kserve_predictor_is_a_valid_pod(source: str, version: str) -> None:
    service = only(source, "InferenceService")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": pod_spec(source)}
    kubernetes_validate.validate(pod, version, strict=True)
    predictor = service["spec"]["predictor"]
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert predictor["scaleMetric"] in ("cpu", "memory", "concurrency", "rps")
    assert kinds(source) == ["PodDisruptionBudget", "InferenceService"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_kserve_predictor_has_a_disruption_budget(version: str) -> None:
    budget = only("kserve", "PodDisruptionBudget")
    kubernetes_validate.validate(budget, version, strict=True)
    service = only("kserve", "InferenceService")
    assert budget["spec"]["selector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": service["metadata"]["name"]
    }
    assert budget["spec"]["maxUnavailable"] < service["spec"]["predictor"]["minReplicas"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_what_the_schemas_cannot_see(overlay: str) -> None:
    """One source per volume, mounts of volumes that exist, Recreate without rollingUpdate, one namespace."""
    deployment = only(overlay, "Deployment")
    spec = pod_spec(overlay)
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    for volume in volumes.values():
        assert len(volume) == 2, f"volume {volume['name']} must have exactly one source: {volume}"
    for container in containers(overlay):
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate" or "rollingUpdate" not in strategy
    namespace = only(overlay, "Namespace")["metadata"]["name"]
    for obj in rendered(overlay):
        if obj["kind"] not in ("Namespace", "PersistentVolume"):
            assert obj["metadata"]["namespace"] == namespace, obj["kind"]
    if "PersistentVolume" in kinds(overlay):
        persistent, claim = only(overlay, "PersistentVolume"), only(overlay, "PersistentVolumeClaim")
        assert persistent["spec"]["claimRef"] == {"namespace": namespace, "name": claim["metadata"]["name"]}
        assert claim["spec"]["volumeName"] == persistent["metadata"]["name"]
        assert volumes["models"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_objects_select_the_pods_and_the_port(overlay: str) -> None:
    pods = only(overlay, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = only(overlay, "Service")
    assert matches(service["spec"]["selector"], pods)
    assert matches(only(overlay, "Deployment")["spec"]["selector"]["matchLabels"], pods)
    (port,) = service["spec"]["ports"]
    assert port["name"] == "http" and port_number(server(overlay), port["targetPort"]) == port["port"]
    policy = only(overlay, "NetworkPolicy")
    assert matches(policy["spec"]["podSelector"]["matchLabels"], pods)
    for rule in policy["spec"]["ingress"]:
        assert [p["port"] for p in rule["ports"]] == [port["targetPort"]]
    if "PodDisruptionBudget" in kinds(overlay):
        assert matches(only(overlay, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pods)
    if "ServiceMonitor" in kinds(overlay):
        monitor = only(overlay, "ServiceMonitor")
        assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"
        assert "/metrics" in app_routes()


def test_each_overlay_has_exactly_the_autoscaler_it_says() -> None:
    """KEDA makes its own HorizontalPodAutoscaler: a second one on the same Deployment would fight it."""
    autoscalers = {"ScaledObject", "HorizontalPodAutoscaler"}
    for fixed in ("edge", "gpu"):  # one box; or as many replicas as GPUs, set by hand
        assert not autoscalers & set(kinds(fixed)) and "PodDisruptionBudget" not in kinds(fixed)
        assert only(fixed, "Deployment")["spec"]["replicas"] == 1
    for overlay, kind in (("cluster", "ScaledObject"), ("cluster-hpa", "HorizontalPodAutoscaler")):
        assert [k for k in kinds(overlay) if k in autoscalers] == [kind]
        deployment = only(overlay, "Deployment")
        assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
        spec = only(overlay, kind)["spec"]
        target = spec["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"], target["name"]) == (
            "apps/v1",
            "Deployment",
            deployment["metadata"]["name"],
        )
        least = spec.get("minReplicaCount", spec.get("minReplicas"))
        budget = only(overlay, "PodDisruptionBudget")["spec"]
        assert least - budget["maxUnavailable"] >= 1, "a drain must leave a replica serving"


def test_keda_scales_on_the_pending_requests_the_service_exports() -> None:
    (trigger,) = only("cluster", "ScaledObject")["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    query = trigger["metadata"]["query"]
    assert set(re.findall(r"\bmvit_[a-z_]+", query)) == {"mvit_requests_pending"} <= exported_metric_names()
    (pending,) = [m for m in Metrics().registry.collect() if m.name == "mvit_requests_pending"]
    assert pending.type == "gauge"  # a per-pod amount: its sum over pods divides by replicas
    labels = dict(re.findall(r'(\w+)="([^"]*)"', query))
    service = only("cluster", "Service")["metadata"]
    assert labels == {"namespace": service["namespace"], "job": service["name"]}  # the ServiceMonitor's job
    assert float(trigger["metadata"]["threshold"]) > 0
    host = re.fullmatch(
        r"http://([\w-]+)\.([\w-]+)\.svc(?:\.cluster\.local)?:9090", trigger["metadata"]["serverAddress"]
    )
    assert host, trigger["metadata"]["serverAddress"]
    policy_namespaces = [
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for rule in only("cluster", "NetworkPolicy")["spec"]["ingress"]
        for peer in rule["from"]
        if peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") == "prometheus"
    ]
    assert policy_namespaces == [host.group(2)]  # the Prometheus KEDA asks is the one allowed to scrape


def test_the_hpa_scales_on_the_cpu_the_pods_request() -> None:
    (metric,) = only("cluster-hpa", "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert 0 < metric["resource"]["target"]["averageUtilization"] < 100
    assert server("cluster-hpa")["resources"]["requests"]["cpu"]  # utilization is relative to it


@pytest.mark.parametrize("source", SOURCES)
def test_probes_ask_routes_the_service_has_on_its_port_without_a_token(source: str) -> None:
    container = server(source)
    settings = settings_of(source, container)
    (port,) = container["ports"]
    assert port["containerPort"] == settings.port == ServerSettings.model_fields["port"].default
    assert [str(port["containerPort"])] == STAGES["edge"].expose
    routes, unguarded = app_routes(), open_paths(settings)
    for probe, what in (
        ("startupProbe", "Readiness"),
        ("readinessProbe", "Readiness"),
        ("livenessProbe", "Liveness"),
    ):
        get = container[probe]["httpGet"]
        assert get["path"] in routes and routes[get["path"]].startswith(what), (probe, get["path"])
        assert get["path"] in unguarded, f"{probe} {get['path']} would need a token"
        assert port_number(container, get["port"]) == port["containerPort"]
    startup = container["startupProbe"]
    start_period = re.search(r"--start-period=(\d+)s", STAGES["edge"].healthcheck or "")
    assert start_period and startup["periodSeconds"] * startup["failureThreshold"] >= int(
        start_period.group(1)
    )


@pytest.mark.parametrize("source", SOURCES)
def test_the_grace_period_outlasts_the_pause_and_the_drain(source: str) -> None:
    container = server(source)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "python" and "python" in (STAGES["edge"].healthcheck or "")  # the image has it
    (pause,) = re.findall(r"time\.sleep\((\d+(?:\.\d+)?)\)", command[-1])
    drain = settings_of(source, container).drain_timeout_s
    assert pod_spec(source)["terminationGracePeriodSeconds"] >= float(pause) + drain + 5


@pytest.mark.parametrize("source", SOURCES)
def test_settings_are_real_fields_and_threads_follow_the_cpu_limit(source: str) -> None:
    for container in containers(source):
        env = environment(source, container)
        for name in env:
            if name.startswith("MVIT_"):
                assert name.removeprefix("MVIT_").lower() in ServerSettings.model_fields, name
        assert not {f"MVIT_{name.upper()}" for name in ENVIRONMENT_ONLY} & env.keys()  # tokens: a file
        settings_of(source, container)  # every value parses
    container = server(source)
    threads = {var["name"]: var.get("valueFrom") for var in container["env"] if "THREADS" in var["name"]}
    limit = {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1"}}
    assert threads == {"MVIT_INFERENCE_THREADS": limit, "MVIT_DECODE_THREADS": limit}
    assert container["resources"]["limits"]["cpu"]  # without a limit the reference gives the node's CPUs


@pytest.mark.parametrize("source", SOURCES)
def test_the_pod_runs_as_the_images_user_locked_down(source: str) -> None:
    spec = pod_spec(source)
    ((uid, gid),) = re.findall(r"useradd [^&]*--uid (\d+) --gid (\d+)", " ".join(STAGES["edge"].runs))
    owner = f"{uid}:{gid}"
    security = spec["securityContext"]
    assert security["runAsNonRoot"] is True and security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert f"{security['runAsUser']}:{security['runAsGroup']}" == owner == f"{uid}:{uid}"
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False, "a Service named mvit would set MVIT_PORT=tcp://..."
    for container in containers(source):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]} and not context.get("privileged")
        assert container["resources"]["limits"].keys() >= {"cpu", "memory"}


def test_the_cluster_pod_is_guaranteed_its_resources() -> None:
    for container in containers("cluster"):
        assert container["resources"]["requests"] == container["resources"]["limits"], container["name"]


@pytest.mark.parametrize("source", SOURCES)
def test_the_read_only_root_leaves_the_service_where_it_writes(source: str) -> None:
    """Measured with strace: multipart uploads over 1 MB spill to /tmp, the ONNX cache goes under the
    model folder, and ONNX Runtime keeps a telemetry id under $HOME/.cache unless told not to."""
    spec = pod_spec(source)
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    server_container = server(source)
    settings = settings_of(source, server_container)
    mounts = {m["mountPath"]: m for m in server_container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]] and not mounts["/tmp"].get("readOnly")
    if source in KSERVE_SOURCES:  # KServe mounts the model repository at /mnt/models, read-only
        uri = environment(source, server_container)["STORAGE_URI"] or ""
        assert re.match(r"(pvc|s3|gs|https?|hf)://", uri) and str(settings.model_repository) == "/mnt/models"
    else:
        assert mounts[str(settings.model_repository)]["readOnly"] is True
    assert settings.onnx_cache is False and settings.onnx_auto_export is False
    for container in containers(source):
        assert environment(source, container).get("ORT_DISABLE_TELEMETRY") == "1", container["name"]
    for init in spec.get("initContainers", []):  # they write the model repository and Hugging Face's cache
        writable = {m["mountPath"] for m in init["volumeMounts"] if not m.get("readOnly")}
        repository = str(settings_of(source, init).model_repository)
        assert {repository, "/tmp"} <= writable
        assert STAGES["full"].env["HF_HOME"].startswith(repository + "/")


@pytest.mark.parametrize("source", SOURCES)
def test_tokens_come_from_a_secret_file_that_is_not_in_git(source: str) -> None:
    container = server(source)
    tokens_file = settings_of(source, container).api_tokens_file
    assert tokens_file is not None
    (mount,) = [m for m in container["volumeMounts"] if tokens_file.parent.as_posix() == m["mountPath"]]
    (volume,) = [v for v in pod_spec(source)["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == TOKENS_SECRET and mount["readOnly"] is True
    assert [item["path"] for item in volume["secret"]["items"]] == [tokens_file.name]
    assert "Secret" not in kinds(source)
    if source == "cluster":  # /metrics needs a token too: Prometheus sends one from the same Secret
        assert "/metrics" not in open_paths(settings_of(source, container))
        (endpoint,) = only("cluster", "ServiceMonitor")["spec"]["endpoints"]
        credentials = endpoint["authorization"]["credentials"]
        assert endpoint["authorization"]["type"] == "Bearer" and credentials["name"] == TOKENS_SECRET
        assert credentials["key"] != volume["secret"]["items"][0]["key"]


@pytest.mark.parametrize("source", SOURCES)
def test_images_are_dockerfile_targets_running_their_commands(source: str) -> None:
    container = server(source)
    name, _, target = container["image"].partition(":")
    assert name == IMAGE and target == ("gpu" if source in GPU_SOURCES else "edge")
    stage = STAGES[target]
    assert (
        [*container.get("command", stage.entrypoint), *container["args"]]
        == stage.command
        == ["mvit", "serve"]
    )
    assert settings_of(source, container).backend == stage.env["MVIT_BACKEND"]
    inits = pod_spec(source).get("initContainers", [])
    expected = {"cluster": ["fetch", "export"], "gpu": ["fetch"]}.get(source, [])  # torch needs no export
    assert [init["args"][0] for init in inits] == expected
    for init in inits:  # fetch and export need torch: the full image
        assert init["image"] == f"{IMAGE}:full" and STAGES["full"].entrypoint == ["mvit"]
        assert any("[export]" in run for run in STAGES["full-packages"].runs)


@pytest.mark.parametrize("source", GPU_SOURCES)
def test_the_gpu_pod_asks_for_one_gpu_and_serves_on_it(source: str) -> None:
    container = server(source)
    settings = settings_of(source, container)
    assert (settings.backend, settings.device, settings.cuda_graphs) == ("torch", "cuda", True)
    assert settings.max_batch_size == 32 == int(STAGES["gpu"].env["MVIT_MAX_BATCH_SIZE"])
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert limits["nvidia.com/gpu"] == 1 and "nvidia.com/gpu" not in requests  # extended resources: limits
    assert {k: v for k, v in limits.items() if k != "nvidia.com/gpu"} == requests  # Guaranteed QoS
    tolerations = pod_spec(source)["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    if source == "kserve-gpu":  # one replica per GPU, set by hand, as the Deployment's
        predictor = only(source, "InferenceService")["spec"]["predictor"]
        assert (
            predictor["minReplicas"]
            == predictor["maxReplicas"]
            == only("gpu", "Deployment")["spec"]["replicas"]
        )


def test_network_policies_admit_the_ingress_controller_and_prometheus_only() -> None:
    def peers(overlay: str) -> list[tuple[str, str | None]]:
        policy = only(overlay, "NetworkPolicy")["spec"]
        assert policy["policyTypes"] == ["Ingress"]
        return [
            (
                peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name"),
            )
            for rule in policy["ingress"]
            for peer in rule["from"]
        ]

    assert peers("cluster") == [("ingress-nginx", None), ("monitoring", "prometheus")]
    assert peers("edge") == [("kube-system", "traefik")]


@pytest.mark.parametrize("source", KSERVE_SOURCES)
def test_the_kserve_predictor_follows_kserve_conventions(source: str) -> None:
    service = only(source, "InferenceService")
    predictor = service["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert (
        "protocolVersion" not in predictor
    )  # a field of the framework specs; custom containers use PROTOCOL
    (port,) = container["ports"]
    assert port["name"] == "http1"  # Knative's name for HTTP/1.1 (h2c is gRPC); KServe keeps it
    annotations = service["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] in ("RawDeployment", "Standard")
    protocol = environment(source, container)["PROTOCOL"]
    assert protocol in ("v1", "v2")
    if protocol == "v2":
        routes = app_routes()
        assert {"/v2", "/v2/health/live", "/v2/health/ready"} <= routes.keys()
        assert any(re.fullmatch(r"/v2/models/\{\w+(:path)?\}/infer", path) for path in routes)
