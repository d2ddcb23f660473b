"""Devices and processes as the library sees them: checked names, never set-up.

The entry points (the tools, :mod:`fcn_repro.cli`) choose the device and
start a process group under ``torchrun``; the library only checks a device
name (:func:`check_device`) and reads the process group that is there
(:func:`process_group`), so that calling it never starts one.
"""
from __future__ import annotations

import sys
from typing import Optional, Tuple

from fcn_repro.errors import FcnReproError

__all__ = ["DeviceError", "check_device", "process_group"]


class DeviceError(FcnReproError):
    """A device name that is not cpu / cuda / cuda:N, or CUDA asked for where it is not available."""


def check_device(device: Optional[str] = None, option: str = "device") -> str:
    """``device`` checked: None -> 'cpu'; 'cuda' / 'cuda:N' only where CUDA is available.
    ``option``: how the message names the setting (a tool says ``--device``)."""
    device = device or "cpu"
    if device != "cpu" and not device.startswith("cuda"):
        raise DeviceError(f"{option} {device}: expected cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        import torch   # not at module top: checking 'cpu' (and importing this module) needs no torch

        if not torch.cuda.is_available():
            raise DeviceError(f"{option} {device}: CUDA is not available here (torch {torch.__version__}); "
                              f"use {option} cpu")
    return device


def process_group() -> Tuple[int, int]:
    """(rank, world size) of the process group the entry point started; (0, 1) when there is none."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()
