"""Facts about the Dockerfile, docker-compose.yml and the monitoring configuration, read from the files
(tests/images builds and runs them)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from app.config import ServerSettings
from app.repository.tuning import TUNED_SETTINGS
from scripts._dockerfile import read_stages
from tests.support import ROOT, exported_metric_names

STAGES = read_stages(ROOT / "Dockerfile")
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PROMETHEUS = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
DASHBOARD = json.loads((ROOT / "deploy/grafana/dashboards/mvit.json").read_text())


@pytest.mark.parametrize("target", ["edge", "edge-openvino", "full", "gpu"])
def test_every_image_runs_the_service_as_a_non_root_user_with_a_health_check(target: str) -> None:
    stage = STAGES[target]
    assert stage.user and stage.user not in ("root", "0")
    assert stage.command == ["mvit", "serve"]
    assert stage.healthcheck and "/health" in stage.healthcheck
    assert stage.expose == [stage.env["MVIT_PORT"]] == [str(ServerSettings.model_fields["port"].default)]
    assert stage.volumes == ["/models"] == [stage.env["MVIT_MODEL_REPOSITORY"]]
    assert stage.env["MVIT_HOST"] == "0.0.0.0"


def packages(target: str) -> list[str]:
    """The pip installs of a target: its `<target>-packages` stage, copied into the image whole."""
    assert f"--from={target}-packages /install /usr/local" in STAGES[target].copies
    return STAGES[f"{target}-packages"].runs[len(STAGES["builder"].runs) :]


def test_edge_has_onnx_runtime_and_no_torch_full_has_torch_from_the_cpu_index() -> None:
    edge, full = STAGES["edge"], STAGES["full"]
    assert edge.env["MVIT_BACKEND"] == "onnx" and full.env["MVIT_BACKEND"] == "torch"
    assert any("[onnx]" in run for run in packages("edge"))
    assert not any("torch" in run for run in packages("edge"))
    assert re.search(
        r"ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cpu\n", (ROOT / "Dockerfile").read_text()
    )
    # torch from its index first; the project's `torch>=2.1` then finds it installed (pip-prefix.sh)
    assert any(
        re.search(r'--index-url "\$TORCH_INDEX_URL".*"\$TORCH_REQUIREMENT".*pip-prefix.*\[export\]', run)
        for run in packages("full")
    )
    openvino = STAGES["edge-openvino"]
    assert openvino.env["MVIT_BACKEND"] == "openvino"
    assert any("[openvino]" in run for run in packages("edge-openvino"))
    assert not any("torch" in run or "[onnx]" in run for run in packages("edge-openvino"))


def test_images_get_packages_slimmed_and_nothing_of_the_build() -> None:
    for target in ("edge", "edge-openvino", "full", "gpu"):
        assert all("pip-prefix" in run and run.endswith("slim-prefix /install") for run in packages(target))
        assert STAGES[target].base == "service" and not STAGES[target].runs[len(STAGES["service"].runs) :]


def test_the_gpu_image_has_torch_from_a_cuda_index_and_serves_on_cuda() -> None:
    gpu = STAGES["gpu"]
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu\d+\n", text)
    assert any(
        re.search(r'--index-url "\$TORCH_INDEX_URL".*"\$TORCH_REQUIREMENT".*pip-prefix.*\[torch\]', run)
        for run in packages("gpu")
    )
    settings = ServerSettings(
        **{k.removeprefix("MVIT_").lower(): v for k, v in gpu.env.items() if k.startswith("MVIT_")}
    )
    assert (settings.backend, settings.device, settings.cuda_graphs) == ("torch", "cuda", True)
    assert settings.max_batch_size == 32


def test_no_architecture_specific_wheels_or_images() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"x86_64|amd64\.whl|aarch64|manylinux|--platform=linux", text)
    assert "--platform=$BUILDPLATFORM" in text  # baking runs natively on the build machine


def test_models_can_be_baked_into_the_edge_image_with_fetch_and_export() -> None:
    baked = STAGES["baked-models"]
    assert any("mvit fetch" in run and "mvit export --all" in run for run in baked.runs)
    assert STAGES["edge-baked"].base == "edge"
    assert any("--from=baked-models" in copy and "/models" in copy for copy in STAGES["edge-baked"].copies)
    # No stage is chosen through a variable (buildah 1.28 cannot build `FROM stage-${ARG}`).
    assert not re.search(r"^FROM\s+\S*\$\{(?!PYTHON_IMAGE)", (ROOT / "Dockerfile").read_text(), flags=re.M)


def test_compose_serves_the_edge_image_with_full_and_gpu_as_profiles() -> None:
    services = COMPOSE["services"]
    assert services["mvit"]["build"]["target"] == "edge" and "profiles" not in services["mvit"]
    assert services["mvit-full"]["build"]["target"] == "full" and services["mvit-full"]["profiles"] == [
        "full"
    ]
    gpu = services["mvit-gpu"]
    assert gpu["build"]["target"] == "gpu" and gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    for name in ("mvit", "mvit-full", "mvit-gpu"):
        assert "./models:/models" in services[name]["volumes"]
        assert any(port.endswith(":8000") for port in services[name]["ports"])
        assert all(key.startswith("MVIT_") for key in services[name]["environment"])
    assert {"prometheus", "grafana"} <= services.keys()


def test_compose_tunes_cpu_services_at_first_start_and_lets_the_record_apply() -> None:
    for name in ("mvit", "mvit-full"):
        environment = COMPOSE["services"][name]["environment"]
        assert float(environment["MVIT_TUNE_AT_START_S"].split(":-")[1].rstrip("}")) > 0
        # A setting given here would win over the tuning record of the box.
        assert not {f"MVIT_{setting.upper()}" for setting in TUNED_SETTINGS} & set(environment)


def test_compose_waits_longer_than_the_drain_before_killing() -> None:
    for name in ("mvit", "mvit-full", "mvit-gpu"):
        service = COMPOSE["services"][name]
        grace = int(service["stop_grace_period"].removesuffix("s"))
        drain = float(service["environment"]["MVIT_DRAIN_TIMEOUT_S"].split(":-")[1].rstrip("}"))
        assert drain == ServerSettings().drain_timeout_s and grace >= drain + 5


def test_prometheus_scrapes_the_service_port_and_metrics_path() -> None:
    (job,) = PROMETHEUS["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert "mvit:8000" in targets and set(targets) <= {f"{name}:8000" for name in COMPOSE["services"]}
    mount = COMPOSE["services"]["prometheus"]["volumes"][0]
    assert mount.startswith("./deploy/prometheus/prometheus.yml:")


def test_dashboard_covers_the_asked_panels_with_metrics_the_service_exports() -> None:
    exprs = [t["expr"] for panel in DASHBOARD["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bmvit_[a-z_]+", expr)}
    assert used and used <= exported_metric_names()
    titles = " ".join(panel["title"].lower() for panel in DASHBOARD["panels"])
    topics = (
        "request rate",
        "p50",
        "p95",
        "p99",
        "queue wait",
        "batch size",
        "errors by status",
        "pending",
        "rejected",
    )
    for topic in topics:
        assert topic in titles
    assert any('phase="queue"' in expr for expr in exprs)
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/mvit.yml").read_text())
    assert provider["providers"][0]["options"]["path"] in " ".join(COMPOSE["services"]["grafana"]["volumes"])
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert {panel["datasource"]["uid"] for panel in DASHBOARD["panels"]} == {"prometheus"}


def readme_commands() -> list[str]:
    """The README's two commands: running the service, running the tests."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## The two commands") : text.index("## Calling it")]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)[:2]


def test_ci_runs_exactly_the_readme_commands_in_a_fresh_virtualenv() -> None:
    serve, test = readme_commands()
    assert "sudo" not in test
    ci_lines = [
        line.strip().removeprefix('PYTEST_ADDOPTS="--durations=25" ')
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
    ]
    install, run = (part.strip() for part in serve.rsplit("&&", 1))
    assert run == "mvit serve"
    steps = [step.strip() for step in test.split("&&")]
    assert steps == ["bash scripts/setup-dev.sh", "python -m pytest"]
    fresh = ci_lines.index('source "$ci/venv/bin/activate"')
    offline = next(
        i for i, line in enumerate(ci_lines) if line.startswith('if out="$(timeout 60 mvit serve ')
    )
    positions = [fresh, ci_lines.index(install), offline, *(ci_lines.index(step) for step in steps)]
    assert positions == sorted(positions)  # each a line of its own, in order, after the fresh venv
