"""pytest over the notebooks (``pytest --nbval-lax notebooks/``, part of ``make test``): the kernels
nbval starts inherit this process's environment, so the notebooks run in the ``tiny`` profile
(seconds each; a student's default is ``demo``). An explicit ``CLUDA_PROFILE`` is kept."""
import os

os.environ.setdefault("CLUDA_PROFILE", "tiny")
