"""pyproject.toml and environment.yml declare the same dependencies; the README's two commands
exist in the Makefile and .ci/run calls the README's test command."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# conda spells a few packages differently from PyPI
CONDA_TO_PYPI = {"pytorch": "torch"}
CONDA_ONLY = {"python", "pip", "pytorch-gpu"}


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pypi = {_name(d) for d in project["dependencies"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = set(), set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip |= {_name(d) for d in dep["pip"] if not d.startswith("-e")}
        else:
            n = _name(dep.split("#")[0])
            if n not in CONDA_ONLY:
                conda.add(CONDA_TO_PYPI.get(n, n))
    assert conda | pip == pypi, (
        f"only in environment.yml: {sorted((conda | pip) - pypi)}; "
        f"only in pyproject.toml: {sorted(pypi - (conda | pip))}")
    assert any(d.startswith("-e .") for dep in env["dependencies"] if isinstance(dep, dict)
               for d in dep["pip"])


def test_readme_commands_exist():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_torch_range_admits_the_local_wheels():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {_name(d): d for d in project["dependencies"]}
    from packaging.specifiers import SpecifierSet

    def admits(spec: str, version: str) -> bool:
        return SpecifierSet(spec[len(_name(spec)):]).contains(version)

    assert admits(deps["torch"], "2.14.1") and admits(deps["torchvision"], "0.29.1")
