"""Shared pytest setup: make ``tests/`` importable so test modules can use ``fake_data``
(tiny raw GTA5 / SYNTHIA / Cityscapes trees) under any pytest import mode."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

# spinning OpenMP threads slow the small shared CI machine down many times over
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# miniscapes class statistics are cached per session (removed at exit), not in the user's ~/.cache
if "CLUDA_KIT_CACHE" not in os.environ:
    os.environ["CLUDA_KIT_CACHE"] = tempfile.mkdtemp(prefix="cluda_kit_cache_")
    atexit.register(shutil.rmtree, os.environ["CLUDA_KIT_CACHE"], ignore_errors=True)

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
