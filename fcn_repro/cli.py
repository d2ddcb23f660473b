"""The command-line conventions every ``python -m fcn_repro.<tool>`` follows.

- ``--json FILE`` writes the tool's report as JSON (``-``: to stdout); the
  JSON never holds inf or NaN (they become null, :func:`fcn_repro.outputs.jsonable`).
- ``--version`` prints the package version.
- A user error (one of ours, :class:`fcn_repro.errors.FcnReproError`: a bad
  weights file or prototxt, a missing net, file or dataset, a bad argument;
  or an ``OSError``: a missing or unwritable file) prints ONE ``error: ...``
  line (hints may follow on indented lines) and exits with status 2,
  without a traceback (with ``--json -`` stdout also gets
  ``{"ok": false, "error": ...}``). Anything else is a bug of ours: the
  traceback is printed, then a line saying so, and the exit status is 3.
  ``--traceback`` (or ``FCN_REPRO_DEBUG=1`` in the environment) prints the
  traceback of a user error too. A tool's own failed check exits 1.
- Output paths (``--json``, ``-o``, ``--save-predictions``, ``--out``) are
  checked writable before the work starts
  (:func:`fcn_repro.outputs.check_writable`), and
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
import json
import os
import sys
import traceback
import types
from typing import Any, Callable, Optional, Sequence

import fcn_repro
from fcn_repro.devices import check_device
from fcn_repro.errors import FcnReproError, context_of
from fcn_repro.outputs import protect_inputs

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_BUG", "EXIT_INTERRUPTED", "UsageError", "is_user_error",
           "debugging",
           "add_common", "add_progress", "HelpFormatter", "run", "front_door", "dist_setup", "dist_teardown",
           "version", "error_line", "say"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUG = 0, 1, 2, 3
#: stopped by Ctrl-C (SIGINT; 128 + 2, the shell's convention)
EXIT_INTERRUPTED = 130

#: set to 1 (or true/yes/on) to see the traceback of every error, user errors included
DEBUG_ENV = "FCN_REPRO_DEBUG"


class UsageError(FcnReproError):
    """A bad argument or option combination (exit status 2)."""


def version() -> str:
    """The version of the code running (``fcn_repro.__version__``)."""
    return fcn_repro.__version__


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
    ap.add_argument("--traceback", action="store_true",
                    help=f"on an error, print the traceback too (also: {DEBUG_ENV}=1 in the environment)")
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


def is_user_error(e: BaseException) -> bool:
    """Whether ``e`` is the user's to fix (a line, exit 2) rather than a bug of ours (a traceback, exit 3).

    Ours are :class:`FcnReproError` (formats, registry, data, solver, usage,
    missing nets and weights); the system's are ``OSError`` (a missing or
    unwritable file, a full disk). A bare ``ValueError``, ``KeyError``,
    ``RuntimeError``, ... raised anywhere is a bug: a refusal of an input
    is one of our errors, naming the input.
    """
    return isinstance(e, (FcnReproError, OSError))


def debugging(args: Optional[argparse.Namespace] = None) -> bool:
    """``--traceback`` given, or ``FCN_REPRO_DEBUG`` set to 1/true/yes/on."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    return env or bool(getattr(args, "traceback", False))


def _error_text(e: BaseException) -> str:
    """error_line plus the context notes added on the way up (the layer a forward failed in)."""
    line = error_line(e)
    notes = [n for n in context_of(e) if n not in line]
    return "\n".join([line] + ["  " + n for n in notes])


def input_files(args: argparse.Namespace, names: Sequence[str]) -> list[str]:
    """The regular files the arguments ``names`` (dests; a value or a list of them) name."""
    out = []
    for n in names:
        v = getattr(args, n, None)
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(x, (str, os.PathLike)) and str(x) != "-" and os.path.isfile(x):
                out.append(os.fspath(x))
    return out


def run(fn: Callable[[argparse.Namespace], int], ap: argparse.ArgumentParser,
        argv: Optional[Sequence[str]] = None, inputs: Sequence[str] = ()) -> int:
    """Parse ``argv`` and call ``fn(args)`` under the conventions above.

    ``inputs``: the dests of the arguments that name input files; no output of
    the run (``-o``, ``--json``, ...) may replace one of them (the same file by
    any name: :func:`fcn_repro.outputs.protect_inputs`).
    """
    args = ap.parse_args(argv)
    try:
        with protect_inputs(input_files(args, inputs)):
            return int(fn(args) or 0)
    except BrokenPipeError:
        # The reader went away (| head): no traceback, nothing more to write.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    except KeyboardInterrupt:
        # Ctrl-C where nothing catches it (train: a second Ctrl-C): a line, no traceback; outputs are
        # atomic, so nothing half-written is left
        if debugging(args):
            traceback.print_exc(file=sys.stderr)
        print("interrupted (Ctrl-C): stopped at once; nothing half-written is left", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - a user error is a line, anything else a bug with its traceback
        user = is_user_error(e)
        if not user or debugging(args):
            traceback.print_exc(file=sys.stderr)
        text = _error_text(e)
        if not user:
            text = (f"{text}\n  this is a bug in fcn_repro {version()} (an unexpected {type(e).__name__}), not "
                    "something in your input: please report it with the traceback above")
        print(text, file=sys.stderr)
        if getattr(args, "json", None) == "-":
            # a machine reading the JSON gets the failure as JSON too
            with contextlib.suppress(OSError):
                print(json.dumps({"ok": False, "error": text.splitlines()[0][len("error: "):],
                                  "bug": not user}))
        return EXIT_USAGE if user else EXIT_BUG
    finally:
        dist_teardown()


class _FrontDoorTool(types.ModuleType):
    """A tool module that is also the front-door call of its name (see :func:`front_door`)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__front_door__(*args, **kwargs)


def front_door(module: str, call: str) -> None:
    """Keep ``fcn_repro.<call>(...)`` callable after ``import fcn_repro.<call>`` (the tool module).

    Importing a submodule binds it to the package's attribute of the same
    name, replacing the front door's function there (``fcn_repro.evaluate``,
    ``fcn_repro.train``); the tool module then forwards a call to that
    function, so both spellings mean the same whatever was imported first.
    """
    if module == "__main__":   # run as a script (python -m): not bound to the package
        return
    mod = sys.modules[module]
    mod.__front_door__ = fcn_repro._CALLS[call]
    mod.__class__ = _FrontDoorTool


def say(msg: str = "", file: Any = None) -> None:
    print(msg, file=file or sys.stdout)


# ------------------------------------------------------------------ outputs

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
