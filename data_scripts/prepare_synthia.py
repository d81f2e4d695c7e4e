#!/usr/bin/env python
"""Convert a raw SYNTHIA-RAND-CITYSCAPES download in place: `python data_scripts/prepare_synthia.py ROOT [--workers N]`.

Writes *_labelTrainIds.png next to the raw labels and ROOT/sample_class_stats.json; see
cluda_kit.data.prepare for the layout, the checks and the options (--help).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cluda_kit.data.prepare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("synthia"))
