"""docs/architecture.md says what the package holds and how its layers stack: both checked against the code
(`app/`) and the import-linter contract that CI enforces (pyproject.toml)."""

from __future__ import annotations

import re
import tomllib

from tests.support import ROOT

ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")


def documented_layout() -> set[str]:
    """The paths the "Package layout" block names: files, and folders with a trailing slash."""
    block = ARCHITECTURE.split("## Package layout", 1)[1].split("```\n", 2)[1]
    paths: set[str] = set()
    parents: list[tuple[int, str]] = []  # (indent, folder) of the enclosing folders
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip())
        names = line.split("  ", 1)[0].strip() if indent == 0 else line.strip().split("  ", 1)[0]
        while parents and parents[-1][0] >= indent:
            parents.pop()
        prefix = "".join(folder for _, folder in parents)
        for name in (part.strip() for part in names.split("|")):
            paths.add(prefix + name)
        if names.endswith("/"):
            parents.append((indent, names))
    return paths


def test_the_layout_names_every_module_and_nothing_that_is_gone() -> None:
    documented = documented_layout()
    package = ROOT / "app"
    modules = {
        "app/" + str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py") and "__pycache__" not in path.parts
    }
    folders = {"app/" + str(path.relative_to(package)) + "/" for path in package.rglob("*") if path.is_dir()}
    folders = {folder for folder in folders if "__pycache__" not in folder}
    assert sorted(modules - documented) == [], "modules docs/architecture.md does not name"
    assert sorted(folders - documented) == [], "folders docs/architecture.md does not name"
    gone = [path for path in documented if not (ROOT / path).exists()]
    assert gone == [], "docs/architecture.md names what is not there"


def test_the_layering_diagram_is_the_contract_ci_checks() -> None:
    diagram = ARCHITECTURE.split("### The layering rule", 1)[1].split("```\n", 2)[1]
    drawn = [re.sub(r"[└─►\s]+", " ", line).strip() for line in diagram.splitlines() if line.strip()]
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    [layers] = [c["layers"] for c in contracts["contracts"] if c["type"] == "layers"]

    def names(layer: str) -> set[str]:
        return {name.strip().removeprefix("app.") for name in re.split(r"[|,]", layer)}

    assert [names(layer) for layer in drawn] == [names(layer) for layer in layers]


def test_no_test_module_imports_another() -> None:
    """What tests share lives in helper modules (tests/support.py, tests/images/lane.py), as
    docs/development.md says."""
    importing = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in (ROOT / "tests").rglob("test_*.py")
        for line in path.read_text(encoding="utf-8").splitlines()
        if re.match(r"\s*(from|import) tests(\.\w+)*\.test_\w+", line)
    ]
    assert importing == []
