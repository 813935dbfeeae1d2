"""Which ONNX Runtime execution providers a session asks for, and whether it got what it asked.

Pure functions over provider names (no onnxruntime import), so the selection and fallback rules are
tested without a GPU, on the lists ONNX Runtime reports:

- `ort.get_available_providers()`: the providers compiled into the installed build (the CPU wheel:
  `AzureExecutionProvider, CPUExecutionProvider`; onnxruntime-gpu adds `TensorrtExecutionProvider`
  and `CUDAExecutionProvider` whether or not a GPU or the CUDA libraries are there);
- `session.get_providers()`: the providers a session actually runs on. ONNX Runtime drops a
  provider that fails to initialise (no device, libcudnn missing...) with a log line of its own
  and carries on with the rest, CPU last: without a check the model silently runs on the CPU.

`choose_providers` runs before the session is built, `check_session_providers` after it. With
`require_accelerator` (`--onnx_require_accelerator`) either one raises `ProviderUnavailable` when
no accelerator is left, and the version fails to load (GetModelStatus: END, with the message).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from serving.manifest import VersionFilesError

CPU_PROVIDER = "CPUExecutionProvider"

# Providers that compute on the host CPU (or call a remote endpoint), so do not count as an
# accelerator: oneDNN, XNNPACK and the Arm compute libraries are CPU kernels; Azure sends requests
# to a cloud endpoint. Every other provider (CUDA, TensorRT, ROCm, MIGraphX, DirectML, CoreML,
# OpenVINO, QNN, ...) is taken as one.
HOST_PROVIDERS = frozenset(
    {
        CPU_PROVIDER,
        "AzureExecutionProvider",
        "DnnlExecutionProvider",
        "XnnpackExecutionProvider",
        "ACLExecutionProvider",
        "ArmNNExecutionProvider",
    }
)


class ProviderUnavailable(VersionFilesError):
    """An accelerator is required (`--onnx_require_accelerator`) but the session would not get one.

    A VersionFilesError so that the repository reports it like other causes outside this code (one
    log line, the version in END with the message, retried when its files change), not as a bug.
    """


@dataclass(frozen=True)
class ProviderChoice:
    providers: tuple[str, ...]  # what to pass to InferenceSession, in order of preference
    warnings: tuple[str, ...]  # requested providers this build does not have, one line each


def accelerators(providers: Sequence[str]) -> list[str]:
    """The providers in `providers` that are accelerators (not in HOST_PROVIDERS), in order."""
    return [p for p in providers if p not in HOST_PROVIDERS]


def choose_providers(
    requested: Sequence[str], available: Sequence[str], require_accelerator: bool = False
) -> ProviderChoice:
    """The requested providers this ONNX Runtime build has, in the requested order (CPU when none).

    Raises ProviderUnavailable when `require_accelerator` is set and the request names no
    accelerator, or this build has none of the ones it names.
    """
    chosen = tuple(dict.fromkeys(p for p in requested if p in available)) or (CPU_PROVIDER,)
    missing = [p for p in requested if p not in available]
    warnings = tuple(
        f"{p} was requested but this onnxruntime build does not have it (it has {', '.join(available)})"
        for p in missing
    )
    if require_accelerator:
        wanted = accelerators(requested)
        if not wanted:
            raise ProviderUnavailable(
                "--onnx_require_accelerator is set but --onnx_providers "
                f"({', '.join(requested) or 'empty'}) names no accelerator: add one, e.g. "
                "CUDAExecutionProvider,CPUExecutionProvider"
            )
        if not accelerators(chosen):
            raise ProviderUnavailable(
                f"--onnx_require_accelerator: none of {', '.join(wanted)} is in this onnxruntime build "
                f"(it has {', '.join(available)}); install the build for that accelerator "
                "(e.g. onnxruntime-gpu for CUDA) or drop the flag to run on the CPU"
            )
    return ProviderChoice(chosen, warnings)


def check_session_providers(
    chosen: Sequence[str], actual: Sequence[str], require_accelerator: bool = False
) -> str | None:
    """Compare what a session was asked for with what it got (`session.get_providers()`).

    Returns a warning when ONNX Runtime dropped requested providers (None when it kept them all);
    raises ProviderUnavailable instead when `require_accelerator` is set and no accelerator is left.
    """
    dropped = [p for p in chosen if p not in actual]
    if not dropped:
        return None
    message = (
        f"ONNX Runtime could not initialise {', '.join(dropped)} (its own log above says why: no "
        f"device, CUDA/cuDNN libraries not found...); running on {', '.join(actual)}"
    )
    if require_accelerator and not accelerators(actual):
        raise ProviderUnavailable(f"--onnx_require_accelerator: {message}")
    return message
