"""What the images hold: no torch at the edge, nothing the service does not need, the tools in `full`, one
multi-arch name for `edge`, and the lane itself failing on a broken image."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.images.lane import BASE_BUDGET_MB, REPORT, VARIANTS, Build, Engine, serve_checked

# What no image needs at run time: pip's cache, the build's wheel and sources, compilers and binutils.
LEFTOVERS = ["/root/.cache/pip", "/home/mvit/.cache/pip", "/wheels", "/src", "/install"]
BUILD_TOOLS = ["gcc", "cc", "strip", "readelf", "make"]


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_edge_holds_no_torch(engine: Engine, build: Callable[[str, str], Build], arch: str) -> None:
    tag = build("edge", arch).tag
    assert engine.os_arch(tag) == arch
    found = engine.python(
        tag,
        "import importlib.util as u; print([m for m in ('torch', 'transformers', 'onnx') if u.find_spec(m)])",
    )
    assert found.strip() == "[]", found
    assert "onnxruntime" in engine.python(tag, "import onnxruntime; print(onnxruntime.__name__)")


@pytest.mark.parametrize("target,arch", VARIANTS, ids=[f"{t}-{a}" for t, a in VARIANTS])
def test_images_hold_nothing_the_service_does_not_need(
    engine: Engine, build: Callable[[str, str], Build], target: str, arch: str
) -> None:
    tag = build(target, arch).tag
    check = f"""
import json, os, shutil, sysconfig
site = sysconfig.get_paths()["purelib"]
print(json.dumps([p for p in {LEFTOVERS!r} if os.path.exists(p)]))
print(json.dumps([t for t in {BUILD_TOOLS!r} if shutil.which(t)]))
print(json.dumps(sorted(os.path.relpath(r, site) for r, _, _ in os.walk(site) if os.path.basename(r) == "tests")))
sizes = {{}}
for root, _, files in os.walk(site):
    top = os.path.relpath(root, site).split(os.sep)[0]
    sizes[top] = sizes.get(top, 0) + sum(os.path.getsize(os.path.join(root, f)) for f in files)
print(", ".join(f"{{name}} {{size / 1e6:.0f}}" for name, size in sorted(sizes.items(), key=lambda i: -i[1])[:8]))
"""
    leftovers, tools, test_suites, largest = engine.python(tag, check).splitlines()
    base = engine.base_image(arch) or "python:3.11-slim"
    base_test_suites = engine.python(base, check).splitlines()[2]  # pip's own, in the base image
    REPORT.append(f"packages {target:<14} {arch}, largest (MB): {largest}")
    added_suites = set(json.loads(test_suites)) - set(json.loads(base_test_suites))
    assert (leftovers, tools, sorted(added_suites)) == ("[]", "[]", [])


def test_edge_adds_at_most_200_mb_to_its_base(engine: Engine, build: Callable[[str, str], Build]) -> None:
    image = build("edge", "amd64")
    base = engine.base_image("amd64") or "python:3.11-slim"
    added = image.size_mb - engine.size_mb(base)
    assert added <= BASE_BUDGET_MB, f"edge adds {added:.0f} MB to {base}"


def test_full_image_makes_and_exports_models(
    engine: Engine, build: Callable[[str, str], Build], tmp_path: Path
) -> None:
    """The tools users run in the full image (`docker compose --profile full run --rm tools ...`)."""
    tag = build("full", "amd64").tag
    out = tmp_path / "models"
    out.mkdir()
    out.chmod(0o777)  # the image's user (uid 10001) writes here
    volume = f"{out}:/models"
    engine.run_tool(tag, "demo-models", "/models", "--task", "classification", volume=volume)
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    engine.run_tool(tag, "export", f"/models/{folder.name}", volume=volume)
    assert (folder / "model.onnx").stat().st_size > 1_000_000
    assert json.loads((folder / "config.json").read_text())["model_type"] == "mobilevitv2"


def test_a_multi_arch_manifest_names_both_edge_builds(
    engine: Engine, build: Callable[[str, str], Build]
) -> None:
    name = "localhost/mobilevitv2-serve:edge"
    engine.run("manifest", "rm", name, check=False)
    engine.run("rmi", name, check=False)
    engine.run("manifest", "create", name)
    for arch in ("amd64", "arm64"):
        engine.run("manifest", "add", name, f"containers-storage:{build('edge', arch).tag}")
    manifest = json.loads(engine.run("manifest", "inspect", name).stdout)
    platforms = sorted(
        f"{m['platform']['os']}/{m['platform']['architecture']}" for m in manifest["manifests"]
    )
    REPORT.append(f"manifest {name}: {', '.join(platforms)}")
    assert platforms == ["linux/amd64", "linux/arm64"]


BROKEN = {
    "runs-as-root": "USER root",
    "entrypoint-exits": 'ENTRYPOINT ["python", "-c", "raise SystemExit(3)"]',
    "healthcheck-fails": 'HEALTHCHECK --interval=15s --timeout=3s CMD ["python", "-c", "raise SystemExit(1)"]',
}


BROKEN_BECAUSE = {
    "runs-as-root": "the service runs as uid 0",
    "entrypoint-exits": "exited before /ready",
    "healthcheck-fails": "its HEALTHCHECK fails",
}


@pytest.mark.parametrize("fault", BROKEN)
def test_the_lane_fails_on_a_broken_image(
    engine: Engine, build: Callable[[str, str], Build], model_repository: Path, tmp_path: Path, fault: str
) -> None:
    """The edge image with one fault added: the checks every image passes must reject it."""
    (tmp_path / "Containerfile").write_text(f"FROM {build('edge', 'amd64').tag}\n{BROKEN[fault]}\n")
    tag = f"localhost/mobilevitv2-serve:broken-{fault}"
    engine.run("build", "--format", "docker", "--pull=never", "--tag", tag, str(tmp_path))
    with pytest.raises(AssertionError, match=BROKEN_BECAUSE[fault]) as failure:
        container, _ = serve_checked(engine, tag, model_repository, f"mvit-lane-broken-{fault}", "amd64")
        container.remove()
    REPORT.append(f"broken image ({fault}): rejected: {str(failure.value).splitlines()[0][:100]}")
    engine.run("rmi", "--force", tag, check=False)


def test_full_holds_a_cpu_torch(engine: Engine, build: Callable[[str, str], Build]) -> None:
    """PyTorch's CPU wheel only: no CUDA build, no NVIDIA libraries, no triton (GBs the image never uses)."""
    tag = build("full", "amd64").tag
    found = engine.python(
        tag,
        "import importlib.util as u, torch; "
        "print(torch.__version__, torch.version.cuda, [m for m in ('nvidia', 'triton') if u.find_spec(m)])",
    )
    REPORT.append(f"full amd64 torch: {found.strip()}")
    _version, cuda, extras = found.split(maxsplit=2)
    assert (cuda, extras.strip()) == ("None", "[]"), found
