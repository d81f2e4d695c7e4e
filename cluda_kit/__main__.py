"""``python -m cluda_kit ...`` is the ``cluda-kit`` command."""
import sys

from .cli import main

sys.exit(main())
