"""The optional extra behind the pictures: ``pip install 'fcn_repro[report]'``.

matplotlib draws every plot (:mod:`fcn_repro.report.plots`); tensorboard lets
training write event files (:mod:`fcn_repro.report.training`). Both are
optional: :func:`require` imports one or refuses in one line naming the extra.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from fcn_repro.errors import FcnReproError

__all__ = ["MissingExtraError", "require", "available", "EXTRA"]

#: the setup.py extra that installs matplotlib and tensorboard
EXTRA = "report"


class MissingExtraError(FcnReproError, ImportError):
    """An optional package a feature needs is not installed (the message names the extra)."""


def available(module: str) -> bool:
    """Whether ``module`` imports."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def require(module: str, what: str) -> ModuleType:
    """``module`` imported, or :class:`MissingExtraError`: '<what> needs <pkg>: pip install ...'."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pkg = module.split(".")[0]
        raise MissingExtraError(f"{what} needs {pkg}, which is not installed: "
                                f"pip install 'fcn_repro[{EXTRA}]' (or pip install {pkg})") from None
