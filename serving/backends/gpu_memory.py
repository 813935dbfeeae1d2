"""`--per_process_gpu_memory_fraction` for ONNX Runtime: the CUDA provider's `gpu_mem_limit`.

TF Serving gives the fraction to TensorFlow's GPU allocator. ONNX Runtime's CUDA provider takes a
byte cap on its memory arena instead (`gpu_mem_limit`), so the fraction is turned into bytes of the
device the session runs on. The device's total memory is read from NVML (`libnvidia-ml`, part of
the NVIDIA driver, loaded with ctypes: no CUDA context is created and no package is needed). NVML
numbers devices physically while CUDA honours `CUDA_VISIBLE_DEVICES`, so the CUDA device id is
mapped through that variable first. The cap is per session: each model version's session gets
one, as each TensorFlow session in TF Serving does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable, Sequence


class GpuMemoryError(RuntimeError):
    """The device's memory could not be read (no driver, no such device)."""


def memory_limit(fraction: float, total_bytes: int) -> int:
    """Bytes for `gpu_mem_limit`: `fraction` (0 < fraction <= 1) of `total_bytes`."""
    if not 0 < fraction <= 1:
        raise ValueError(f"the GPU memory fraction must be in (0, 1], got {fraction}")
    return int(total_bytes * fraction)


def physical_device(cuda_device: int, visible: str | None) -> int | str:
    """The NVML device (index, or UUID string) behind CUDA device `cuda_device`, given
    `CUDA_VISIBLE_DEVICES` (None or empty: CUDA and NVML number devices alike)."""
    if not visible or not visible.strip():
        return cuda_device
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    if cuda_device >= len(entries):
        raise GpuMemoryError(f"CUDA device {cuda_device} is not in CUDA_VISIBLE_DEVICES={visible}")
    entry = entries[cuda_device]
    return int(entry) if entry.isdigit() else entry


class _Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def device_memory_bytes(cuda_device: int = 0) -> int:
    """Total memory of CUDA device `cuda_device`, from NVML; raises GpuMemoryError."""
    name = ctypes.util.find_library("nvidia-ml") or "libnvidia-ml.so.1"
    try:
        nvml = ctypes.CDLL(name)
    except OSError as exc:
        raise GpuMemoryError(f"cannot load NVML ({name}): {exc}") from exc
    if nvml.nvmlInit_v2() != 0:
        raise GpuMemoryError("nvmlInit failed (no NVIDIA driver?)")
    try:
        device = physical_device(cuda_device, os.environ.get("CUDA_VISIBLE_DEVICES"))
        handle = ctypes.c_void_p()
        if isinstance(device, int):
            status = nvml.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(device), ctypes.byref(handle))
        else:
            status = nvml.nvmlDeviceGetHandleByUUID(device.encode(), ctypes.byref(handle))
        if status != 0:
            raise GpuMemoryError(f"NVML has no device {device} (status {status})")
        memory = _Memory()
        if nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)) != 0:
            raise GpuMemoryError(f"NVML cannot read the memory of device {device}")
        return int(memory.total)
    finally:
        nvml.nvmlShutdown()


CUDA_PROVIDER = "CUDAExecutionProvider"
ProviderEntry = str | tuple[str, dict[str, str]]


def with_memory_limit(
    providers: Sequence[ProviderEntry],
    fraction: float,
    total_bytes: Callable[[int], int] = device_memory_bytes,
) -> tuple[list[ProviderEntry], str | None]:
    """`providers` (names, or (name, options) pairs as InferenceSession takes them) with
    `gpu_mem_limit` set on the CUDA provider to `fraction` of its device's memory.

    Returns (providers, warning): unchanged with no warning when `fraction` is 0 or CUDA is not
    requested; unchanged with a warning when the device's memory cannot be read. A
    `gpu_mem_limit` already in the provider's options (a per-model setting) is kept.
    """
    if fraction <= 0:
        return list(providers), None
    result: list[ProviderEntry] = []
    warning = None
    for entry in providers:
        name, options = (entry, {}) if isinstance(entry, str) else (entry[0], dict(entry[1]))
        if name == CUDA_PROVIDER and "gpu_mem_limit" not in options:
            device = int(options.get("device_id", 0))
            try:
                options["gpu_mem_limit"] = str(memory_limit(fraction, total_bytes(device)))
            except GpuMemoryError as exc:
                warning = f"--per_process_gpu_memory_fraction not applied: {exc}"
        result.append((name, options) if options else name)
    return result, warning
