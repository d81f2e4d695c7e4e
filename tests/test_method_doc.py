"""docs/method.md is the kit's one method reference.

No tracked file points to the design notes' method file (it is not in the repository), and every
config field that docs/method.md names in backticks (``section.field`` or
``section.sub.field``) exists in :class:`cluda_kit.config.Config`.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import typing
from pathlib import Path

import pytest

from cluda_kit.config import Config

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "method.md"
# spelled in pieces so that this file does not match itself
STALE = ("METHOD" + ".md", "../" + "shared")
SECTIONS = ("data", "model", "uda", "loss", "optim", "train")
# a dotted path starting with a section name, not part of a longer dotted name or a file name
FIELD = re.compile(r"(?<![\w./-])((?:%s)(?:\.[A-Za-z_]\w*){1,2})(?![\w./(])" % "|".join(SECTIONS))


def _tracked_files() -> list[Path]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    res = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if res.returncode != 0:
        pytest.skip("not a git checkout")
    return [ROOT / name for name in res.stdout.decode().split("\0") if name]


def _resolves(path: str) -> bool:
    """True when ``path`` (``a.b`` or ``a.b.c``) walks Config's nested dataclass fields."""
    cls: typing.Any = Config
    for name in path.split("."):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            return False
        hints = typing.get_type_hints(cls)
        if name not in {f.name for f in dataclasses.fields(cls)}:
            return False
        cls = hints[name]
    return True


def _field_paths(markdown: str) -> list[str]:
    """Config-looking paths inside inline code spans (fenced blocks skipped)."""
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    paths = []
    for span in re.findall(r"`([^`\n]+)`", text):
        paths += FIELD.findall(span)
    return paths


def test_no_file_points_to_the_design_notes():
    offenders = []
    for path in _tracked_files():
        if not path.is_file():
            continue
        data = path.read_bytes()
        for needle in STALE:
            if needle.encode() in data:
                offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not offenders, "point to docs/method.md instead: " + "; ".join(offenders)


def test_resolves_helper():
    assert _resolves("uda.pseudo_threshold")
    assert _resolves("loss.contrastive.temperature")
    assert _resolves("model.hrda")
    assert not _resolves("uda.threshold")
    assert not _resolves("uda.pseudo_threshold.x")
    assert _field_paths("`cluda_kit.data.labels` `train.amp=none` `--set uda.mix_per_image=false`") == [
        "train.amp", "uda.mix_per_image"]


def test_method_doc_fields_exist():
    paths = _field_paths(DOC.read_text(encoding="utf-8"))
    assert len(paths) > 50, f"docs/method.md names only {len(paths)} config fields"
    unknown = sorted({p for p in paths if not _resolves(p)})
    assert not unknown, f"docs/method.md names config fields that do not exist: {unknown}"
