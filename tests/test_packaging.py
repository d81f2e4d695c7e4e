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


USER_EXTRAS = ("analysis", "notebooks", "video", "hf")  # what environment.yml installs beside the library


def _extra_names(project: dict, extra: str) -> set[str]:
    """The distributions an extra pulls in, following ``cluda_kit[...]`` self-references."""
    names: set[str] = set()
    for dep in project["optional-dependencies"][extra]:
        if _name(dep) == "cluda-kit":
            for inner in re.search(r"\[(.*)\]", dep).group(1).split(","):
                names |= _extra_names(project, inner.strip())
        else:
            names.add(_name(dep))
    return names


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pypi = {_name(d) for d in project["dependencies"]}
    for extra in USER_EXTRAS:
        pypi |= _extra_names(project, extra)
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip, editable = set(), set(), []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip |= {_name(d) for d in dep["pip"] if not d.startswith("-e")}
            editable += [d for d in dep["pip"] if d.startswith("-e")]
        else:
            n = _name(dep.split("#")[0])
            if n not in CONDA_ONLY:
                conda.add(CONDA_TO_PYPI.get(n, n))
    assert conda | pip == pypi, (
        f"only in environment.yml: {sorted((conda | pip) - pypi)}; "
        f"only in pyproject.toml: {sorted(pypi - (conda | pip))}")
    assert editable == [f"-e .[{','.join(USER_EXTRAS)}]"], editable  # the user's set, not dev


def test_training_library_needs_no_extra():
    """The library's core dependencies hold no analysis or notebook package, and the dev extra
    (what make install installs) includes every other extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(d) for d in project["dependencies"]}
    assert not core & {"jupyterlab", "umap-learn", "opentsne", "ipywidgets", "scikit-learn", "av"}
    dev = _extra_names(project, "dev")
    for extra in project["optional-dependencies"]:
        assert _extra_names(project, extra) <= dev, extra


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


def test_training_and_predict_run_without_the_extras(tmp_path):
    """Train, evaluate and predict with the extras' packages made unimportable."""
    import subprocess
    import sys

    code = f"""
import sys
BLOCKED = {{"sklearn", "umap", "openTSNE", "ipywidgets", "jupyterlab", "av", "nbval", "pytest"}}
for name in BLOCKED:
    sys.modules[name] = None  # `import name` raises ImportError, as if it were not installed
from cluda_kit.cli import main
from PIL import Image
import numpy as np
run = {str(tmp_path / 'run')!r}
assert main(["train", "miniscapes_tiny", "--set", "train.max_iters=1", "--out", run]) == 0
assert main(["evaluate", run]) == 0
Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save({str(tmp_path / 'x.png')!r})
assert main(["predict", run, {str(tmp_path / 'x.png')!r}, "--out", {str(tmp_path / 'pred')!r}]) == 0
print("ok", sorted(m for m in BLOCKED if sys.modules.get(m) is not None))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok []")
