"""Progress bars: on a terminal only.

Every progress bar of the package is made here: tqdm on stderr, shown only when
it is asked for (the tools' ``--no-progress`` turns it off) AND stderr is a
terminal. Off a terminal (a log file, a pipe, CI) the bar is disabled, so no
carriage-return frames end up in logs; the tools print their plain lines instead.
"""
from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

__all__ = ["bar", "on_terminal"]


def on_terminal() -> bool:
    """Whether stderr (where the bars go) is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):   # replaced by an object without isatty, or closed
        return False


def bar(*args: Any, enabled: bool = True, **kwargs: Any) -> tqdm:
    """``tqdm(*args, **kwargs)`` on stderr, disabled unless ``enabled`` and stderr is a terminal
    (a ``disable=`` given by the caller is honoured too). A disabled bar still counts
    (``.n``, ``update``) but writes nothing."""
    kwargs.setdefault("file", sys.stderr)
    kwargs["disable"] = bool(kwargs.get("disable", False)) or not enabled or not on_terminal()
    return tqdm(*args, **kwargs)
