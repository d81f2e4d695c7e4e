"""The kit's error for a wrong configuration, below every other module so that any layer can
raise it (the command line prints it as one line)."""
from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration file, key or value is wrong; the message names it."""
