"""`--per_process_gpu_memory_fraction` -> ONNX Runtime's CUDA `gpu_mem_limit` (no GPU needed)."""

from __future__ import annotations

import pytest

from serving.backends.gpu_memory import GpuMemoryError, memory_limit, physical_device, with_memory_limit

H200 = 150_754_820_096  # bytes NVML reports for one H200


def test_the_limit_is_the_fraction_of_the_device() -> None:
    assert memory_limit(0.5, H200) == H200 // 2
    assert memory_limit(1.0, 1000) == 1000
    with pytest.raises(ValueError):
        memory_limit(0.0, 1000)


def test_cuda_device_ids_map_through_cuda_visible_devices() -> None:
    assert physical_device(1, None) == 1
    assert physical_device(1, "") == 1
    assert physical_device(0, "3,1") == 3
    assert physical_device(1, "GPU-8f6c,GPU-12ab") == "GPU-12ab"
    with pytest.raises(GpuMemoryError, match="not in CUDA_VISIBLE_DEVICES"):
        physical_device(2, "0,1")


def test_only_the_cuda_provider_gets_the_limit() -> None:
    devices: list[int] = []

    def total(device: int) -> int:
        devices.append(device)
        return 8 * 2**30

    providers, warning = with_memory_limit(["CUDAExecutionProvider", "CPUExecutionProvider"], 0.25, total)
    assert providers == [("CUDAExecutionProvider", {"gpu_mem_limit": str(2 * 2**30)}), "CPUExecutionProvider"]
    assert warning is None and devices == [0]
    # The provider's own device is measured; a per-model gpu_mem_limit already set is kept.
    providers, _ = with_memory_limit([("CUDAExecutionProvider", {"device_id": "1"})], 0.5, total)
    assert providers == [("CUDAExecutionProvider", {"device_id": "1", "gpu_mem_limit": str(4 * 2**30)})]
    assert devices == [0, 1]
    kept = [("CUDAExecutionProvider", {"gpu_mem_limit": "1024"})]
    assert with_memory_limit(kept, 0.5, total)[0] == kept
    assert with_memory_limit(["CPUExecutionProvider"], 0.5, total) == (["CPUExecutionProvider"], None)
    assert with_memory_limit(["CUDAExecutionProvider"], 0.0, total) == (["CUDAExecutionProvider"], None)


def test_an_unreadable_device_leaves_the_provider_as_it_was_with_a_warning() -> None:
    def broken(device: int) -> int:
        raise GpuMemoryError("cannot load NVML")

    providers, warning = with_memory_limit(["CUDAExecutionProvider"], 0.5, broken)
    assert providers == ["CUDAExecutionProvider"]
    assert warning == "--per_process_gpu_memory_fraction not applied: cannot load NVML"


def test_without_a_driver_nvml_fails_cleanly() -> None:
    from serving.backends.gpu_memory import device_memory_bytes

    try:
        total = device_memory_bytes(0)
    except GpuMemoryError:
        return  # this machine has no NVIDIA driver: the error the backend turns into a warning
    assert total > 0
