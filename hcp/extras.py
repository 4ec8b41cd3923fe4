"""Optional packages, imported only by the commands that need them.

A plain ``pip install .`` (the production image) carries the job, the API, the simulators and
the tools around them; the embedded broker, the benchmarks' HTTP client and the charts come
with extras. A command that needs one imports it through :func:`require`, so a missing extra
is one line naming what to install, never a ``ModuleNotFoundError`` from deep inside.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from hcp.errors import ConfigError

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ConfigError):
    """A command needs a package that only one of HCP's extras installs."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        msg = f"{purpose} needs the '{extra}' extra: pip install 'hcp[{extra}]'"
        raise MissingExtraError(msg) from None
