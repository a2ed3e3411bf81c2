"""The one device and dtype picker: serving (`predictor.py`), training (`training/train.py`) and the
captioners ask here, so "auto" means the same thing everywhere.

    device: "auto" (cuda when a GPU is present, else cpu) | "cpu" | "cuda" | "cuda:N"
    dtype:  "auto" (bf16 where the device has bf16 matrix units, else fp32) | "bf16" | "fp16" | "fp32"

bf16 capability is detected, never assumed: on CUDA `torch.cuda.is_bf16_supported()`; on a CPU the
AMX / AVX512-BF16 flags in /proc/cpuinfo (without them bf16 matmuls are emulated and slower than fp32).
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}


def _cpuinfo_field(name: str) -> str:
    """The first ``name : value`` line of /proc/cpuinfo ("" where there is none, e.g. not Linux)."""
    with contextlib.suppress(OSError):  # no /proc (not Linux): no flags, so no bf16/int8 assumptions
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    return ""


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's ISA flags (amx_bf16, amx_int8, avx512_bf16, avx512_vnni, ...): what bf16 and int8 run on."""
    return frozenset(_cpuinfo_field("flags").split())


@functools.cache
def cpu_model() -> str:
    return _cpuinfo_field("model name")


def cpu_has_bf16_units() -> bool:
    """AMX or AVX512-BF16: bf16 matrix products run several times faster than fp32 on these CPUs."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda when a GPU is present, else cpu; "cpu", "cuda", "cuda:N" as given."""
    device = str(device).strip().lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.split(":")[0] not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)} (or cuda:N)")
    return torch.device(device)


def has_bf16_units(device: torch.device) -> bool:
    """Whether bf16 matmuls are native (fast) on this device."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16_units()


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """"auto" -> bf16 where `device` has bf16 units, else fp32; a name from DTYPES as given."""
    dtype = dtype.strip().lower()
    if dtype == "auto":
        return torch.bfloat16 if has_bf16_units(device) else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    """bf16 autocast for training and evaluation where the device has bf16 units; a no-op elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and has_bf16_units(device))
