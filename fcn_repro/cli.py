"""The command-line conventions every ``python -m fcn_repro.<tool>`` follows.

- ``--json FILE`` writes the tool's report as JSON (``-``: to stdout); the
  JSON never holds inf or NaN (they become null, :func:`jsonable`).
- ``--version`` prints the package version.
- A user error (a project error: a ValueError subclass such as a bad
  weights file or prototxt, a missing file or dataset, a bad argument) prints
  ONE ``error: ...`` line (hints may follow on indented lines) and exits
  with status 2, without a traceback (with ``--json -`` stdout also gets
  ``{"ok": false, "error": ...}``). A tool's own failed check exits 1.
- Output paths (``--json``, ``-o``, ``--save-predictions``, ``--out``) are
  checked writable before the work starts (:func:`check_writable`), and
  written atomically (:mod:`fcn_repro.outputs`), so a refused or failed run
  leaves nothing half-written.
- A closed stdout (``| head``) ends the tool quietly.
- Devices and processes are set up here, by the entry points only:
  :func:`dist_setup` (CPU unless ``--device cuda``, a clean error where CUDA
  is absent; under ``torchrun`` gloo on CPU, NCCL on CUDA, one GPU per
  local rank). The library only checks names
  (:func:`fcn_repro.devices.check_device`) and reads the group that is there.

Usage in a tool::

    def main(argv=None):
        return cli.run(_main, build_parser(), argv)
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from fcn_repro.devices import check_device
from fcn_repro.errors import FcnReproError
from fcn_repro.outputs import output_file

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "UsageError", "add_common", "add_progress", "HelpFormatter", "run", "check_writable",
           "jsonable", "write_json", "dist_setup", "dist_teardown", "version", "error_line", "say"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(FcnReproError):
    """A bad argument or option combination (exit status 2)."""


def version() -> str:
    try:
        from importlib.metadata import version as v

        return v("fcn_repro")
    except Exception:  # noqa: BLE001 - not installed: running from a checkout
        return "unknown (not installed)"


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that a text laid out by hand (a description or epilog
    with line breaks: a docstring, the examples) is printed as written, not re-flowed."""

    def _fill_text(self, text, width, indent):
        if "\n" in text.strip("\n"):
            return "\n".join(indent + line if line else line for line in text.strip("\n").splitlines())
        return super()._fill_text(text, width, indent)


def add_common(ap: argparse.ArgumentParser, json_help: Optional[str] = "write the report as JSON to FILE "
               "('-': stdout)", examples: Sequence[str] = ()) -> argparse.ArgumentParser:
    """``--version``, (unless ``json_help`` is None) ``--json FILE`` and, from ``examples``
    (command lines, each optionally followed by ``  # what it does``), the epilog of ``--help``."""
    ap.add_argument("--version", action="version", version=f"%(prog)s (fcn_repro {version()})")
    if json_help is not None:
        ap.add_argument("--json", metavar="FILE", help=json_help)
    if examples:
        ap.epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
        if ap.formatter_class is argparse.HelpFormatter:
            ap.formatter_class = HelpFormatter
    return ap


def add_progress(ap, *aliases: str, help: str = "no progress bar (there is one only when stderr is a "
                 "terminal)") -> None:
    """The one quiet switch of every tool with a progress bar: ``--no-progress`` (``aliases``: a
    tool's older spellings, e.g. convert's ``-q``), stored as ``args.no_progress``."""
    ap.add_argument("--no-progress", *aliases, dest="no_progress", action="store_true", help=help)


def error_line(e: BaseException) -> str:
    """The ``error: ...`` text of an exception: first line prefixed, further lines indented."""
    msg = str(e) if str(e) else type(e).__name__
    if isinstance(e, OSError) and e.filename and msg.startswith("[Errno"):
        msg = f"{e.filename}: {e.strerror}"  # the file first, not Python's errno prefix
    if isinstance(e, KeyError) and not isinstance(e, ValueError) and e.args:
        msg = str(e.args[0])
    lines = msg.strip("\n").splitlines() or [type(e).__name__]
    return "\n".join([f"error: {lines[0]}"] + [ln if ln.startswith(" ") else "  " + ln for ln in lines[1:]])


def _user_error(e: BaseException) -> bool:
    # Our errors are FcnReproError (a ValueError: formats, registry, data,
    # solver, usage; evaluation.MissingError is also a FileNotFoundError);
    # other missing files are FileNotFoundError (DataMissingError too);
    # an unwritable path is PermissionError / IsADirectoryError / NotADirectoryError.
    return isinstance(e, (ValueError, FileNotFoundError, PermissionError, IsADirectoryError,
                          NotADirectoryError))


def run(fn: Callable[[argparse.Namespace], int], ap: argparse.ArgumentParser,
        argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` and call ``fn(args)`` under the conventions above."""
    args = ap.parse_args(argv)
    try:
        return int(fn(args) or 0)
    except BrokenPipeError:
        # The reader went away (| head): no traceback, nothing more to write.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as e:  # noqa: BLE001 - only user errors are turned into a line
        if not _user_error(e):
            raise
        line = error_line(e)
        print(line, file=sys.stderr)
        if getattr(args, "json", None) == "-":
            # a machine reading the JSON gets the failure as JSON too
            with contextlib.suppress(OSError):
                print(json.dumps({"ok": False, "error": line.splitlines()[0][len("error: "):]}))
        return EXIT_USAGE
    finally:
        dist_teardown()


def say(msg: str = "", file: Any = None) -> None:
    print(msg, file=file or sys.stdout)


# ------------------------------------------------------------------ outputs

def check_writable(path: Optional[str | os.PathLike], what: str = "output", directory: bool = False) -> None:
    """Raise (a user error naming ``path``) unless ``path`` can be written.

    ``-`` (stdout) and None pass. A file path must not be a directory and
    its nearest existing ancestor must be a writable directory; a directory
    path must be a directory (or creatable) and writable. Nothing is created.
    """
    if path is None or str(path) == "-":
        return
    p = Path(path)
    if directory:
        if p.exists() and not p.is_dir():
            raise NotADirectoryError(f"{what} {p}: exists and is not a directory")
    elif p.is_dir():
        raise IsADirectoryError(f"{what} {p}: is a directory (a file path is expected)")
    elif p.exists() and not os.access(p, os.W_OK):
        raise PermissionError(f"{what} {p}: not writable")
    anc = p if directory and p.is_dir() else p.parent
    while not anc.exists():
        if anc.parent == anc:
            break
        anc = anc.parent
    if not anc.is_dir():
        raise NotADirectoryError(f"{what} {p}: {anc} is not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {p}: directory {anc} is not writable")
    # access() says yes to root on a read-only file system: try a real file.
    try:
        fd, tmp = tempfile.mkstemp(prefix=".fcn_repro-check-", dir=anc)
    except OSError as e:
        raise PermissionError(f"{what} {p}: cannot write in {anc} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(tmp)


def jsonable(x: Any) -> Any:
    """Plain JSON data: arrays to lists, NumPy scalars to Python, inf/NaN to None,
    paths to str, dataclasses to dicts."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (np.integer, int)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return jsonable(dataclasses.asdict(x))
    return x


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """``obj`` as JSON (through :func:`jsonable`) to ``path``, atomically; ``-``: stdout."""
    text = json.dumps(jsonable(obj), indent=indent, allow_nan=False) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with output_file(path, len(text.encode()), "w") as f:
        f.write(text)


# ------------------------------------------------------------------ processes

def dist_setup(device: Optional[str] = None) -> tuple[int, int, str]:
    """(rank, world size, device) for this process.

    ``device``: None or 'cpu' -> CPU; 'cuda' / 'cuda:N' -> that GPU (a user
    error when CUDA is not available). Under torchrun (WORLD_SIZE > 1) the
    process group is initialised (gloo on CPU, NCCL on CUDA, one GPU per
    local rank).
    """
    import torch

    device = check_device(device, "--device")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device.startswith("cuda") and ":" not in device:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) if world > 1 else torch.cuda.current_device()}"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    if world <= 1:
        return 0, 1, device
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def dist_teardown() -> None:
    dist = sys.modules.get("torch.distributed")
    if dist is None:  # never imported: nothing to tear down (and no torch import for zoo/netspec)
        return
    with contextlib.suppress(Exception):
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
