"""The package's layering (README, docs/extending.md): each layer imports only layers below it,

    errors  <  fileio, batch, runtime, config  <  data  <  models  <  uda  <  engine  <  analysis  <  notebook, cli

checked on the import statements of every module (imports inside functions included), so that a
new dependency in the wrong direction fails here rather than as an import cycle later."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "cluda_kit"
RANK = {"errors": -1, "fileio": 0, "batch": 0, "runtime": 0, "config": 0, "data": 1, "models": 2, "uda": 3, "engine": 4,
        "analysis": 5, "notebook": 6, "cli": 6, "__main__": 7}


def _kit_imports(path: Path) -> set[str]:
    """Top-level kit modules (``data``, ``engine``, ...) that ``path`` imports."""
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    package = parts[:-1]  # the package a relative import starts from (for __init__ too)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
                if len(target) == 1 and not node.module:  # from .. import x, y
                    found.update(a.name for a in node.names)
                    continue
            else:
                target = (node.module or "").split(".")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                t = alias.name.split(".")
                if t[0] == "cluda_kit" and len(t) > 1:
                    found.add(t[1])
            continue
        else:
            continue
        if target[0] == "cluda_kit" and len(target) > 1:
            found.add(target[1])
    return found


def test_every_module_imports_only_lower_layers():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("").parts
        own = rel[0]
        if own not in RANK:
            continue
        for dep in _kit_imports(path):
            if dep != own and dep in RANK and RANK[dep] >= RANK[own]:
                bad.append(f"cluda_kit/{'/'.join(rel)}.py imports {dep} (layer {own} may not)")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_relative_and_absolute_imports(tmp_path):
    assert _kit_imports(PKG / "engine" / "trainer.py") >= {"uda", "models", "data", "config", "runtime"}
    assert "analysis" in _kit_imports(PKG / "cli.py")


def test_dataset_readers_do_not_import_the_preparation_code():
    import subprocess
    import sys

    code = ("import sys, cluda_kit.data.datasets as d; "
            "assert 'cluda_kit.data.prepare' not in sys.modules; "
            "from cluda_kit.data.prepare import STATS_FILE; assert STATS_FILE == d.STATS_FILE")
    subprocess.run([sys.executable, "-c", code], check=True)
