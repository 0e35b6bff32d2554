"""One line describing the machine a model was made on, for MANIFEST records and run metadata."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def hardware(threads: int | None = None) -> str:
    """'<CPU model>, <N> cores[, <T> torch threads], torch <version>'."""
    import torch

    parts = [cpu_model(), f"{os.cpu_count()} cores"]
    if threads is not None:
        parts.append(f"{threads} torch threads")
    return ", ".join(parts + [f"torch {torch.__version__}"])


def device_description(device) -> str:
    """What a process trains on: '<GPU name>, CUDA <version>, ' + the hardware() line for a CUDA device
    (without the thread count), hardware(<torch threads>) for the CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{name}, CUDA {torch.version.cuda}, {hardware()}"
    return hardware(torch.get_num_threads())
