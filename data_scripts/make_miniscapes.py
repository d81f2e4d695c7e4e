#!/usr/bin/env python
"""Write miniscapes in a raw dataset layout:
`python data_scripts/make_miniscapes.py OUT --domain game|sim|real [--split train] [--num N] [--size H W]`.

game -> GTA5 layout, sim -> SYNTHIA-RAND-CITYSCAPES layout, real -> Cityscapes layout; prepare the
result with the matching data_scripts/prepare_*.py. See cluda_kit.data.prepare.write_miniscapes.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cluda_kit.data.prepare import make_miniscapes_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(make_miniscapes_main())
