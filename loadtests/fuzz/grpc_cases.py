"""gRPC fuzz cases: TF Serving's requests, valid and broken in every field, and raw bytes that are no message.

`grpc_case(seed, index)` builds case `index` from its own random source (`cases.case_rng`). Each case
is sent as bytes through a raw channel method, so a payload that is not even a protobuf goes out
unchanged. Families (weights in `FAMILIES`):

* `valid.*`: a request built to be valid for a served model and signature (expects OK);
* `predict.tensor`: a valid Predict with 1-3 mutations of its tensors: every DataType (and numbers
  that are none), negative, zero and overflowing dims (2**31, 2**62, 2**63-1), rank 33+, unknown
  rank, tensor_content of the wrong length, typed fields of the wrong type (`half_val`, `int_val`,
  `string_val` for a float input), too many values, NaN/Inf, invalid UTF-8 and lying image headers,
  DT_VARIANT nesting, unknown / missing / renamed inputs, batch sizes that disagree;
* `predict.names`, `metadata`, `status`: model names (unknown, empty, `../x`, 10,000 characters,
  unicode, NUL), versions (0, negative, 2**63-1, unknown), labels and signature names;
* `predict.output_filter`: unknown, empty, duplicated and thousands of names;
* `predict.huge`: repeated fields and maps of millions of entries, over and under the message limit;
* `classify`: tf.Example features of the wrong kind, count and name, empty inputs, models without labels;
* `raw`: bytes that are not a valid message (random, truncated, bit-flipped, bad UTF-8 in a string
  field, overlong varints, lengths past the end, field 0, 10,000-deep nesting), sent to real and
  unknown methods.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import message as protobuf_message
from grpc_health.v1 import health_pb2

from loadtests.fuzz import media
from loadtests.fuzz.cases import GRPC, GrpcCase, Notes, case_rng, short, weighted
from loadtests.fuzz.models import (
    MODELS,
    VARIABLE_LENGTHS,
    ModelInfo,
    SignatureInfo,
    TensorInfo,
    concrete_shape,
)
from serving.proto import apis_pb2, example_pb2, tensor_pb2

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
PREDICT = f"/{PREDICTION_SERVICE}/Predict"
CLASSIFY = f"/{PREDICTION_SERVICE}/Classify"
METADATA = f"/{PREDICTION_SERVICE}/GetModelMetadata"
STATUS = f"/{MODEL_SERVICE}/GetModelStatus"
RELOAD = f"/{MODEL_SERVICE}/HandleReloadConfigRequest"
HEALTH = "/grpc.health.v1.Health/Check"

# What an OK answer must parse as, per method.
RESPONSE_TYPES: dict[str, type[protobuf_message.Message]] = {
    PREDICT: apis_pb2.PredictResponse,
    CLASSIFY: apis_pb2.ClassificationResponse,
    METADATA: apis_pb2.GetModelMetadataResponse,
    STATUS: apis_pb2.GetModelStatusResponse,
    RELOAD: apis_pb2.ReloadConfigResponse,
    HEALTH: health_pb2.HealthCheckResponse,
}
# Methods no service has: gRPC itself answers UNIMPLEMENTED.
UNKNOWN_METHODS = (
    f"/{PREDICTION_SERVICE}/Regress",
    f"/{PREDICTION_SERVICE}/MultiInference",
    f"/{PREDICTION_SERVICE}/predict",
    "/tensorflow.serving.Nope/Predict",
    f"/{PREDICTION_SERVICE}/",
    "/x",
)

DATA_TYPE_OF = {
    "float32": tensor_pb2.DT_FLOAT,
    "float64": tensor_pb2.DT_DOUBLE,
    "int32": tensor_pb2.DT_INT32,
    "string": tensor_pb2.DT_STRING,
}
NUMPY_OF = {"float32": np.float32, "float64": np.float64, "int32": np.int32}
TYPED_FIELD = {"float32": "float_val", "float64": "double_val", "int32": "int_val", "string": "string_val"}
# Every DataType number, and numbers that are none (the enum is open: any int32 is on the wire).
ALL_DATA_TYPES = (*tensor_pb2.DataType.values(), 24, 99, 101, 2**31 - 1, -1)
OVERFLOWING_DIMS = (2**31, 2**32 + 1, 2**62, 2**63 - 1)
BAD_DIMS = (-1, -7, -(2**63), *OVERFLOWING_DIMS)

TRICKY_NAMES = (
    "",
    "nope",
    "../digits",
    "digits/../digits",
    "./digits",
    "digits/",
    "/digits",
    "DIGITS",
    " digits",
    "digits ",
    "digits\x00",
    "digits\n",
    "%2e%2e",
    "..",
    ".",
    "*",
    "d" * 10_000,
    "数字",
    "digits\u202e",
    "\uff44\uff49\uff47\uff49\uff54\uff53",  # full-width letters
)
TRICKY_SIGNATURES = (
    "nope",
    "Serving_Default",
    " serving_default",
    "serving_default\x00",
    "../serving_default",
    "s" * 5000,
    "签名",
)
TRICKY_LABELS = ("nope", "STABLE", "stable ", "l" * 5000, "标签", "1")
TRICKY_VERSIONS = (0, -1, -(2**63), 3, 1000, 2**31, 2**63 - 1)


@dataclass
class Draft(Notes):
    """A gRPC case under construction: the method it calls, and its notes."""

    method: str = ""
    deadline: float = 0.0


# -- model specs -----------------------------------------------------------------------------------


def _spec(
    rng: random.Random,
    draft: Draft,
    model: ModelInfo,
    signature: str,
    tricky: float,
    signature_matters: bool = True,
) -> apis_pb2.ModelSpec:
    """The ModelSpec for `model`/`signature`, each part made tricky with probability `tricky`.

    Records in `draft` whether the spec still resolves (a served name, version, label, signature).
    """
    spec = apis_pb2.ModelSpec(name=model.name)
    if rng.random() < tricky:
        spec.name = rng.choice(TRICKY_NAMES) if rng.random() < 0.7 else media.random_name(rng)
        served = spec.name in MODELS  # a random name could, in principle, be another served model
        draft.note(f"name={short(spec.name)}", invalid=not served, unsure=served)
    else:
        draft.note(f"name={spec.name!r}")
    roll = rng.random()
    if roll < tricky * 0.5:
        version = rng.choice(TRICKY_VERSIONS)
        spec.version.value = version
        draft.note(f"version={version}", invalid=version not in model.versions)
    elif roll < tricky:
        label = rng.choice(TRICKY_LABELS) if rng.random() < 0.8 else ""
        spec.version_label = label
        # An empty label is no label (the newest version): what TF Serving does with it may differ.
        draft.note(
            f"version_label={short(label)}",
            invalid=bool(label) and label not in model.labels,
            unsure=not label,
        )
    elif roll < 0.3 + tricky:
        version = rng.choice(model.versions)
        spec.version.value = version
        draft.note(f"version={version}")
    elif roll < 0.4 + tricky and model.labels:
        spec.version_label = rng.choice(sorted(model.labels))
        draft.note(f"version_label={spec.version_label!r}")
    if rng.random() < tricky * 0.5:
        spec.signature_name = rng.choice((*TRICKY_SIGNATURES, "explain", "predict_image_bytes"))
        text = f"signature={short(spec.signature_name)}"
        if not signature_matters:
            draft.note(text + " (ignored by this method)")
        elif spec.signature_name in model.signatures:
            draft.note(text + f" (inputs built for {signature!r})", unsure=spec.signature_name != signature)
        else:
            draft.note(text, invalid=True)
    else:
        spec.signature_name = signature if signature != "serving_default" or rng.random() < 0.5 else ""
        draft.note(f"signature={spec.signature_name!r}")
    return spec


# -- tensors ----------------------------------------------------------------------------------------


def _batch(rng: random.Random) -> int:
    return rng.choice((1, 1, 1, 2, 3, 4, 8)) if rng.random() < 0.95 else rng.randint(9, 64)


def _values(rng: random.Random, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Random valid values: pixels 0..255 for floats (now and then extreme finite ones), any int32."""
    generator = np.random.default_rng(rng.getrandbits(64))
    if dtype == "int32":
        return generator.integers(-(2**31), 2**31, size=shape, dtype=np.int32)
    array = generator.uniform(0, 255, size=shape).astype(NUMPY_OF[dtype])
    if rng.random() < 0.1 and array.size:
        extreme = rng.choice((0.0, -0.0, 1e-45, 3.4e38, -3.4e38, 1e-300))
        array.reshape(-1)[rng.randrange(array.size)] = extreme
    return array


def _strings(rng: random.Random, signature: SignatureInfo, name: str, rows: int) -> list[bytes]:
    if name == "text":
        return [media.random_text(rng).encode() for _ in range(rows)]
    return [media.real_image(rng)[0] for _ in range(rows)]


def _tensor(
    rng: random.Random, dtype: str, dims: tuple[int, ...], values: np.ndarray | list[bytes]
) -> tuple[tensor_pb2.TensorProto, str]:
    """Encode valid values, through tensor_content or the typed field (TF's fill rule now and then)."""
    proto = tensor_pb2.TensorProto(dtype=DATA_TYPE_OF[dtype])
    proto.tensor_shape.dim.extend(tensor_pb2.TensorShapeProto.Dim(size=d) for d in dims)
    if dtype == "string":
        proto.string_val.extend(values)
        return proto, f"string_val x{len(values)}"
    assert isinstance(values, np.ndarray)
    roll = rng.random()
    if roll < 0.6:
        proto.tensor_content = values.astype(values.dtype.newbyteorder("<")).tobytes()
        return proto, f"tensor_content {len(proto.tensor_content)}B"
    typed = getattr(proto, TYPED_FIELD[dtype])
    if roll < 0.7 and values.size:
        typed.append(values.reshape(-1)[0].item())  # one value fills the tensor
        return proto, f"{TYPED_FIELD[dtype]} x1 (fill rule)"
    typed.extend(values.reshape(-1).tolist())
    return proto, f"{TYPED_FIELD[dtype]} x{values.size}"


def _inputs(
    rng: random.Random, signature: SignatureInfo, draft: Draft, rows: int | None = None
) -> dict[str, tensor_pb2.TensorProto]:
    """Valid input tensors for a signature (an explain may take image_bytes instead of image)."""
    rows = rows or _batch(rng)
    specs = _feature_specs(rng, signature)
    length = rng.choice(VARIABLE_LENGTHS)  # for every -1 after the batch dimension
    tensors = {}
    parts = []
    for name, info in specs.items():
        dims = concrete_shape(info, rows, length)
        if dims[1:] != info.shape[1:] and length % info.multiple:
            draft.note(
                f"({name}: length {length}, the graph needs a multiple of {info.multiple})", unsure=True
            )
        values: np.ndarray | list[bytes]
        values = (
            _strings(rng, signature, name, rows) if info.dtype == "string" else _values(rng, info.dtype, dims)
        )
        tensors[name], how = _tensor(rng, info.dtype, dims, values)
        parts.append(f"{name}: {info.dtype} {list(dims)} {how}")
    draft.note("inputs{" + "; ".join(parts) + "}")
    return tensors


def _pick(rng: random.Random, strings: bool | None = None) -> tuple[ModelInfo, str, SignatureInfo]:
    """A served model and one of its signatures (with `strings`: one taking / not taking strings)."""
    choices = [
        (model, name, sig)
        for model in MODELS.values()
        for name, sig in model.signatures.items()
        if strings is None or any(i.dtype == "string" for i in sig.inputs.values()) == strings
    ]
    return rng.choice(choices)


# -- mutations of a valid Predict ------------------------------------------------------------------

Mutation = Callable[[random.Random, apis_pb2.PredictRequest, str, Draft], None]


def _expected_info(request: apis_pb2.PredictRequest, name: str) -> TensorInfo | None:
    model = MODELS[request.model_spec.name]
    return model.signatures[request.model_spec.signature_name or "serving_default"].inputs.get(name)


def _expected_dtype(request: apis_pb2.PredictRequest, name: str) -> str:
    model = MODELS[request.model_spec.name]
    signature = model.signatures[request.model_spec.signature_name or "serving_default"]
    info = signature.inputs.get(name)
    return info.dtype if info is not None else "string"


def _uses_content(tensor: tensor_pb2.TensorProto) -> bool:
    return bool(tensor.tensor_content)


def mutate_dtype(rng: random.Random, request: apis_pb2.PredictRequest, name: str, draft: Draft) -> None:
    tensor = request.inputs[name]
    new = rng.choice(ALL_DATA_TYPES)
    before = tensor.dtype
    tensor.dtype = new
    label = tensor_pb2.DataType.Name(new) if new in tensor_pb2.DataType.values() else str(new)
    draft.note(f"{name}.dtype={label}", invalid=new != before)


def mutate_dim(rng: random.Random, request: apis_pb2.PredictRequest, name: str, draft: Draft) -> None:
    tensor = request.inputs[name]
    if not tensor.tensor_shape.dim:
        return mutate_rank(rng, request, name, draft)
    axis = rng.randrange(len(tensor.tensor_shape.dim))
    old = tensor.tensor_shape.dim[axis].size
    info = _expected_info(request, name)
    # The batch, and -1 dims of a signature (window's length), may take any size; the others are fixed.
    free = axis == 0 or (info is not None and axis < len(info.shape) and info.shape[axis] < 0)
    roll = rng.random()
    if roll < 0.6:
        new = rng.choice(BAD_DIMS)
        draft.note(f"{name}.dim[{axis}]={new}", invalid=True)
    elif roll < 0.75:
        new = 0
        # An empty batch (or length) may be refused or not; a fixed dim of 0 is wrong.
        draft.note(f"{name}.dim[{axis}]=0", invalid=not free, unsure=free)
    else:
        new = min(max(1, old + rng.choice((-1, 1, 7))), 2**63 - 1)
        if new == old:
            draft.note(f"{name}.dim[{axis}] kept at {old}")
        elif not free or (axis == 0 and _several_inputs(request)) or _uses_content(tensor):
            draft.note(f"{name}.dim[{axis}]={new} (was {old})", invalid=True)
        else:  # a typed field's values are padded (or too many): TensorFlow's fill rule decides
            draft.note(f"{name}.dim[{axis}]={new} (was {old}; typed field)", unsure=True)
    tensor.tensor_shape.dim[axis].size = new
    return None


def _several_inputs(request: apis_pb2.PredictRequest) -> bool:
    return len(request.inputs) > 1


def mutate_rank(rng: random.Random, request: apis_pb2.PredictRequest, name: str, draft: Draft) -> None:
    tensor = request.inputs[name]
    roll = rng.random()
    if roll < 0.3:
        tensor.tensor_shape.unknown_rank = True
        draft.note(f"{name}.unknown_rank=true", invalid=True)
    elif roll < 0.55:
        count = rng.choice((33, 40, 64, 1000))
        del tensor.tensor_shape.dim[:]
        tensor.tensor_shape.dim.extend(tensor_pb2.TensorShapeProto.Dim(size=1) for _ in range(count))
        draft.note(f"{name}: rank {count} of 1s", invalid=True)
    elif roll < 0.8:
        tensor.tensor_shape.dim.add(size=1)
        draft.note(f"{name}: an extra trailing dim of 1", invalid=True)
    else:
        del tensor.tensor_shape.dim[:]
        draft.note(f"{name}: rank 0 (scalar)", invalid=True)


def mutate_content(rng: random.Random, request: apis_pb2.PredictRequest, name: str, draft: Draft) -> None:
    tensor = request.inputs[name]
    string = tensor.dtype == tensor_pb2.DT_STRING
    roll = rng.random()
    if roll < 0.5 or string:
        length = rng.choice((1, 3, 7, 4095, 4097, rng.randint(0, 20000)))
        if not string and length == len(tensor.tensor_content):
            length += 1
        tensor.tensor_content = rng.randbytes(length)
        draft.note(f"{name}.tensor_content = {length} random bytes", invalid=True)
    elif roll < 0.75:
        content = tensor.tensor_content or b"\x00" * 16
        tensor.tensor_content = content + content[: rng.randint(1, len(content))]
        draft.note(f"{name}.tensor_content longer than its shape", invalid=True)
    else:
        field_name = TYPED_FIELD[_expected_dtype(request, name)]
        count = min(_element_count(tensor), 100_000)  # another mutation may have made it 2**62
        typed = getattr(tensor, field_name)
        del typed[:]
        tensor.ClearField("tensor_content")
        filler = {"float_val": 1.0, "double_val": 1.0, "string_val": b"x"}.get(field_name, 1)
        typed.extend([filler] * (count + rng.choice((1, 2, 100))))
        draft.note(f"{name}.{field_name} with more values than the shape holds", invalid=True)


def _element_count(tensor: tensor_pb2.TensorProto) -> int:
    count = 1
    for dim in tensor.tensor_shape.dim:
        count *= max(dim.size, 0)
    return count


def mutate_typed_field(rng: random.Random, request: apis_pb2.PredictRequest, name: str, draft: Draft) -> None:
    """Values in a typed field of another type (half_val, int_val, string_val... for a float input)."""
    tensor = request.inputs[name]
    expected_field = TYPED_FIELD[_expected_dtype(request, name)]
    tensor.ClearField("tensor_content")
    for typed_name in TYPED_FIELD.values():
        tensor.ClearField(typed_name)
    count = min(_element_count(tensor), 5000)
    chosen = rng.choice(
        (
            "half_val", "int_val", "int64_val", "bool_val", "string_val", "double_val", "float_val",
            "scomplex_val", "dcomplex_val", "uint32_val", "uint64_val",
        )
    )  # fmt: skip
    typed = getattr(tensor, chosen)
    if chosen == "half_val":
        typed.extend(
            rng.choice((0, 0x3C00, 0x7C00, 0x7E00, 65535, 70000, -1, 2**31 - 1)) for _ in range(count)
        )
    elif chosen == "int_val":
        typed.extend(rng.choice((0, 1, -1, 2**31 - 1, -(2**31), 255, 256)) for _ in range(count))
    elif chosen == "int64_val":
        typed.extend(rng.choice((0, 2**63 - 1, -(2**63), 2**40)) for _ in range(count))
    elif chosen in ("uint32_val", "uint64_val"):
        typed.extend(rng.choice((0, 2**32 - 1)) for _ in range(count))
    elif chosen == "bool_val":
        typed.extend(rng.random() < 0.5 for _ in range(count))
    elif chosen == "string_val":
        typed.extend(media.invalid_utf8(rng) if rng.random() < 0.5 else b"12.5" for _ in range(count))
    else:
        typed.extend(rng.choice((0.5, float("nan"), float("inf"), -1e308)) for _ in range(count))
    # The field the dtype reads, left empty, means zeros (TensorFlow's rule): either answer is fair.
    draft.note(
        f"{name}: only {chosen} set ({count} values; the signature reads {expected_field})", unsure=True
    )


def mutate_nonfinite(rng: random.Random, request: apis_pb2.PredictRequest, name: str, draft: Draft) -> None:
    tensor = request.inputs[name]
    dtype = _expected_dtype(request, name)
    if dtype not in ("float32", "float64") or tensor.dtype != DATA_TYPE_OF[dtype]:
        return mutate_strings(rng, request, name, draft)
    value = rng.choice((float("nan"), float("inf"), float("-inf")))
    itemsize = np.dtype(NUMPY_OF[dtype]).itemsize
    if tensor.tensor_content:
        if len(tensor.tensor_content) % itemsize:
            return None  # already broken by another mutation
        array = np.frombuffer(tensor.tensor_content, dtype=np.dtype(NUMPY_OF[dtype]).newbyteorder("<")).copy()
        array[rng.randrange(array.size)] = value
        tensor.tensor_content = array.tobytes()
    else:
        typed = getattr(tensor, TYPED_FIELD[dtype])
        if typed:
            typed[rng.randrange(len(typed))] = value
        else:
            typed.append(value)
    draft.note(f"{name}: one value is {value}", invalid=True)
    return None


def mutate_strings(rng: random.Random, request: apis_pb2.PredictRequest, name: str, draft: Draft) -> None:
    tensor = request.inputs[name]
    if tensor.dtype != tensor_pb2.DT_STRING or not tensor.string_val:
        return mutate_typed_field(rng, request, name, draft)
    index = rng.randrange(len(tensor.string_val))
    if name == "text":
        roll = rng.random()
        if roll < 0.5:
            tensor.string_val[index] = media.invalid_utf8(rng)
            draft.note(f"{name}[{index}] is invalid UTF-8 (tokenized byte-wise)")
        elif roll < 0.8:
            size = rng.choice((1 << 20, (1 << 20) + 1, 3 << 20))
            tensor.string_val[index] = (b"good " * (size // 5 + 1))[:size]
            draft.note(f"{name}[{index}] is {size} bytes", invalid=size > 1 << 20)
        else:
            tensor.string_val[index] = b"\x00" * rng.randint(0, 64)
            draft.note(f"{name}[{index}] is NUL bytes")
    else:
        data, what = media.broken_image(rng)
        tensor.string_val[index] = data
        surely = not what.startswith(("PNG ", "JPEG ", "GIF ", "BMP ")) or "claiming" in what
        draft.note(f"{name}[{index}]: {what}", invalid=surely, unsure=not surely)
    return None


def mutate_names(rng: random.Random, request: apis_pb2.PredictRequest, name: str, draft: Draft) -> None:
    roll = rng.random()
    if roll < 0.35:
        new = (
            rng.choice(("", "Image", "image ", "i" * 5000, "图像", "image\x00", "../image"))
            if rng.random() < 0.7
            else media.random_name(rng)
        )
        if new in request.inputs:
            new += "_"
        request.inputs[new].CopyFrom(request.inputs[name])
        del request.inputs[name]
        draft.note(f"input {name!r} renamed {short(new)}", invalid=True)
    elif roll < 0.6:
        del request.inputs[name]
        draft.note(f"input {name!r} left out", invalid=True)
    elif roll < 0.85:
        extra = rng.choice(
            ("extra", "probabilities", "", "image_bytes" if name != "image_bytes" else "image")
        )
        if extra in request.inputs:
            extra += "_x"
        request.inputs[extra].CopyFrom(request.inputs[name])
        draft.note(f"an extra input {extra!r}", invalid=True)
    else:
        count = rng.choice((100, 10_000))
        for number in range(count):
            request.inputs[f"junk{number}"].dtype = tensor_pb2.DT_FLOAT
        draft.note(f"{count} extra empty inputs", invalid=True)


def mutate_variant(rng: random.Random, request: apis_pb2.PredictRequest, name: str, draft: Draft) -> None:
    tensor = request.inputs[name]
    tensor.Clear()
    tensor.tensor_shape.dim.add(size=1)
    if rng.random() < 0.5:
        tensor.dtype = tensor_pb2.DT_VARIANT
        inner = tensor.variant_val.add(type_name="tensorflow::Tensor", metadata=rng.randbytes(16))
        for _ in range(rng.randint(1, 50)):
            inner = inner.tensors.add(dtype=tensor_pb2.DT_VARIANT).variant_val.add()
        draft.note(f"{name}: DT_VARIANT nested variant_val", invalid=True)
    else:
        tensor.dtype = tensor_pb2.DT_RESOURCE
        tensor.resource_handle_val.add(device="/cpu:0", container="x", name="y", hash_code=2**64 - 1)
        draft.note(f"{name}: DT_RESOURCE handle", invalid=True)


def mutate_dim_name(rng: random.Random, request: apis_pb2.PredictRequest, name: str, draft: Draft) -> None:
    tensor = request.inputs[name]
    for dim in tensor.tensor_shape.dim:
        dim.name = media.random_name(rng)
    tensor.version_number = rng.choice((0, 1, -1, 2**31 - 1))
    draft.note(f"{name}: dim names and version_number {tensor.version_number} set (ignored)")


MUTATIONS: tuple[tuple[Mutation, int], ...] = (
    (mutate_dtype, 4),
    (mutate_dim, 5),
    (mutate_rank, 2),
    (mutate_content, 4),
    (mutate_typed_field, 3),
    (mutate_nonfinite, 2),
    (mutate_strings, 3),
    (mutate_names, 3),
    (mutate_variant, 1),
    (mutate_dim_name, 1),
)


# -- families ---------------------------------------------------------------------------------------


def _predict(
    rng: random.Random, draft: Draft, tricky: float = 0.0, strings: bool | None = None
) -> apis_pb2.PredictRequest:
    model, signature_name, signature = _pick(rng, strings)
    spec = _spec(rng, draft, model, signature_name, tricky)
    request = apis_pb2.PredictRequest(model_spec=spec)
    for name, tensor in _inputs(rng, signature, draft).items():
        request.inputs[name].CopyFrom(tensor)
    return request


def valid_predict(rng: random.Random) -> tuple[Draft, bytes]:
    draft = Draft(method=PREDICT)
    return draft, _predict(rng, draft).SerializeToString()


def predict_tensor(rng: random.Random) -> tuple[Draft, bytes]:
    draft = Draft(method=PREDICT)
    request = _predict(rng, draft)
    # Mutations below read the signature from the spec: keep it the served one.
    mutations = [m for m, _ in MUTATIONS]
    weights = [w for _, w in MUTATIONS]
    chosen = rng.choices(mutations, weights=weights, k=rng.choice((1, 1, 2, 3)))
    for mutation in chosen:
        if not request.inputs:
            break
        name = rng.choice(sorted(request.inputs))
        if name not in _served_inputs(request):
            continue
        mutation(rng, request, name, draft)
    if len(chosen) > 1 and draft.invalid:
        # A later mutation can undo an earlier one (a dtype set back, a shape grown to fit the
        # values): only a single mutation's verdict is sure.
        draft.invalid, draft.unsure = False, True
    return draft, request.SerializeToString()


def _served_inputs(request: apis_pb2.PredictRequest) -> set[str]:
    model = MODELS[request.model_spec.name]
    signature = model.signatures[request.model_spec.signature_name or "serving_default"]
    return set(signature.inputs) | set(signature.alternatives)


def predict_names(rng: random.Random) -> tuple[Draft, bytes]:
    draft = Draft(method=PREDICT)
    return draft, _predict(rng, draft, tricky=0.6).SerializeToString()


def predict_output_filter(rng: random.Random) -> tuple[Draft, bytes]:
    draft = Draft(method=PREDICT)
    request = _predict(rng, draft)
    model = MODELS[request.model_spec.name]
    outputs = model.signatures[request.model_spec.signature_name or "serving_default"].outputs
    roll = rng.random()
    if roll < 0.3:
        names = rng.sample(outputs, rng.randint(1, len(outputs)))
        draft.note(f"output_filter={names}")
    elif roll < 0.45:
        names = [outputs[0], outputs[0]]
        draft.note(f"output_filter={names} (duplicated)", unsure=True)
    elif roll < 0.85:
        junk = rng.choice(("", "nope", "heatmap", "Probabilities", "probabilities\x00", "输出", "p" * 5000))
        names = [*outputs[:1], junk] if rng.random() < 0.5 else [junk]
        draft.note(f"output_filter={[short(n) for n in names]}", invalid=junk not in outputs)
    else:
        names = [f"junk{i}" for i in range(rng.choice((1000, 100_000)))]
        draft.note(f"output_filter of {len(names)} unknown names", invalid=True)
    request.output_filter.extend(names)
    return draft, request.SerializeToString()


def predict_huge(rng: random.Random) -> tuple[Draft, bytes]:
    """Huge repeated fields: around the server's message limit (the campaign runs it at 8 MiB)."""
    draft = Draft(method=PREDICT)
    kind = rng.choice(("float_val", "content_under", "string_count", "dims_many", "float_over"))
    request = apis_pb2.PredictRequest(model_spec=apis_pb2.ModelSpec(name="digits"))
    tensor = request.inputs["image"]
    tensor.dtype = tensor_pb2.DT_FLOAT
    if kind == "float_over":
        rows = 2900  # 2900 x 784 floats = 9.1 MB packed: over the limit
        tensor.tensor_shape.dim.extend(tensor_pb2.TensorShapeProto.Dim(size=d) for d in (rows, 28, 28, 1))
        tensor.float_val.extend(np.full(rows * 784, 1.5, dtype=np.float32).tolist())
        draft.note(f"digits image float_val x{rows * 784} (~9 MB, over the message limit)", invalid=True)
    elif kind == "float_val":
        rows = rng.choice((64, 512))
        tensor.tensor_shape.dim.extend(tensor_pb2.TensorShapeProto.Dim(size=d) for d in (rows, 28, 28, 1))
        tensor.float_val.extend(np.full(rows * 784, 3.0, dtype=np.float32).tolist())
        # Over the batcher's max_batch_size (64 here) a request is refused, as TF Serving does.
        draft.note(f"digits image float_val x{rows * 784}, shape [{rows},28,28,1]", unsure=rows > 64)
    elif kind == "content_under":
        rows = 2000  # 6.3 MB: under the 8 MiB limit
        tensor.tensor_shape.dim.extend(tensor_pb2.TensorShapeProto.Dim(size=d) for d in (rows, 28, 28, 1))
        tensor.tensor_content = np.zeros((rows, 28, 28, 1), np.float32).tobytes()
        draft.note(
            f"digits image tensor_content {len(tensor.tensor_content)}B, shape [{rows},28,28,1]", unsure=True
        )
    elif kind == "string_count":
        request.model_spec.name = "sentiment"
        del request.inputs["image"]
        text = request.inputs["text"]
        text.dtype = tensor_pb2.DT_STRING
        count = rng.choice((10_000, 100_000))
        text.tensor_shape.dim.add(size=count)
        text.string_val.extend([b"good fun"] * count)
        draft.note(f"sentiment text string_val x{count}", unsure=True)
    else:
        count = rng.choice((10_000, 500_000))
        tensor.tensor_shape.dim.extend(tensor_pb2.TensorShapeProto.Dim(size=1) for _ in range(count))
        draft.note(f"digits image with {count} dims", invalid=True)
    return draft, request.SerializeToString()


def _example(features: dict[str, tuple[str, list[Any]]]) -> example_pb2.Example:
    example = example_pb2.Example()
    for name, (kind, values) in features.items():
        feature = example.features.feature[name]
        if kind == "float":
            feature.float_list.value.extend(values)
        elif kind == "int64":
            feature.int64_list.value.extend(values)
        elif kind == "bytes":
            feature.bytes_list.value.extend(values)
        # kind "none": a feature with no list at all
    return example


def _feature_specs(rng: random.Random, signature: SignatureInfo) -> dict[str, TensorInfo]:
    """The inputs a request gives: the signature's, an alternative (image_bytes) now and then."""
    specs = dict(signature.inputs)
    for alternative, replaced in signature.alternatives.items():
        if rng.random() < 0.5:
            del specs[replaced]
            specs[alternative] = TensorInfo("string", (-1,))
    return specs


def _classify_features(
    rng: random.Random, signature: SignatureInfo, specs: dict[str, TensorInfo]
) -> dict[str, tuple[str, list[Any]]]:
    features: dict[str, tuple[str, list[Any]]] = {}
    for name, info in specs.items():
        if info.dtype == "string":
            features[name] = ("bytes", _strings(rng, signature, name, 1))
        else:
            per_row = int(np.prod(concrete_shape(info, 1, 2)[1:]))
            features[name] = ("float", _values(rng, "float32", (per_row,)).tolist())
    return features


def classify(rng: random.Random) -> tuple[Draft, bytes]:
    draft = Draft(method=CLASSIFY)
    model, signature_name, signature = _pick(rng)
    tricky = 0.0 if rng.random() < 0.4 else 0.3
    spec = _spec(rng, draft, model, signature_name, tricky)
    if not model.classes:
        draft.note("model has no labels", invalid=True)
    rows = _batch(rng)
    specs = _feature_specs(rng, signature)
    examples = [_classify_features(rng, signature, specs) for _ in range(rows)]
    request = apis_pb2.ClassificationRequest(model_spec=spec)
    roll = rng.random()
    if roll < 0.1:
        draft.note("input holds no examples", invalid=True)
    elif roll < 0.25:
        listed = request.input.example_list_with_context
        listed.context.CopyFrom(_example(examples[0]))
        listed.examples.extend(example_pb2.Example() for _ in range(rows))
        draft.note(f"{rows} empty examples with every feature in the context ({sorted(examples[0])})")
    else:
        mutated = _mutate_examples(rng, examples, draft) if rng.random() < 0.5 else examples
        request.input.example_list.examples.extend(_example(e) for e in mutated)
        if mutated is examples:
            draft.note(f"{rows} examples of {sorted(examples[0])}")
    return draft, request.SerializeToString()


def _mutate_examples(
    rng: random.Random, examples: list[dict[str, tuple[str, list[Any]]]], draft: Draft
) -> list[dict[str, tuple[str, list[Any]]]]:
    target = rng.randrange(len(examples))
    example = dict(examples[target])
    name = rng.choice(sorted(example))
    kind, values = example[name]
    roll = rng.random()
    if roll < 0.2:
        example[name] = ("none", [])
        draft.note(f"example {target}: feature {name!r} holds no list", invalid=True)
    elif roll < 0.35:
        example[name] = ("int64", [rng.choice((0, 2**63 - 1, -(2**63)))] * len(values))
        draft.note(f"example {target}: {name!r} as int64_list", unsure=True)
    elif roll < 0.55:
        cut = list(values)[: rng.randint(0, max(0, len(values) - 1))]
        extra = [b"x"] if kind == "bytes" else [1.0] * rng.choice((1, 1000))
        example[name] = (kind, cut if rng.random() < 0.5 else [*values, *extra])
        draft.note(f"example {target}: {name!r} of the wrong length", invalid=True)
    elif roll < 0.7:
        example[rng.choice(("nope", "", "图像"))] = example.pop(name)
        draft.note(f"example {target}: feature {name!r} renamed", invalid=True)
    elif roll < 0.8:
        example["extra"] = example[name]
        draft.note(f"example {target}: an extra feature", invalid=True)
    elif roll < 0.9 and kind == "float":
        floats = list(values)
        floats[0] = rng.choice((float("nan"), float("inf")))
        example[name] = (kind, floats)
        draft.note(f"example {target}: {name!r} holds {floats[0]}", invalid=True)
    else:
        example[name] = ("bytes", [media.broken_image(rng)[0] if name != "text" else media.invalid_utf8(rng)])
        draft.note(f"example {target}: {name!r} as odd bytes", unsure=True)
    return [example if i == target else e for i, e in enumerate(examples)]


def metadata(rng: random.Random) -> tuple[Draft, bytes]:
    draft = Draft(method=METADATA)
    model, signature_name, _ = _pick(rng)
    spec = _spec(rng, draft, model, signature_name, tricky=0.5, signature_matters=False)
    request = apis_pb2.GetModelMetadataRequest(model_spec=spec)
    roll = rng.random()
    if roll < 0.6:
        fields = ["signature_def"]
    elif roll < 0.7:
        fields = []
        draft.note("metadata_field=[]", invalid=True)
    elif roll < 0.8:
        fields = ["signature_def", "signature_def"]
        draft.note("metadata_field twice", unsure=True)
    else:
        fields = [rng.choice(("", "junk", "SIGNATURE_DEF", "x" * 5000))] * rng.choice((1, 1000))
        draft.note(f"metadata_field={short(fields)}", invalid=True)
    request.metadata_field.extend(fields)
    return draft, request.SerializeToString()


def status(rng: random.Random) -> tuple[Draft, bytes]:
    draft = Draft(method=STATUS)
    model, signature_name, _ = _pick(rng)
    spec = _spec(rng, draft, model, signature_name, tricky=0.5, signature_matters=False)
    return draft, apis_pb2.GetModelStatusRequest(model_spec=spec).SerializeToString()


def reload_config(rng: random.Random) -> tuple[Draft, bytes]:
    draft = Draft(method=RELOAD)
    request = apis_pb2.ReloadConfigRequest()
    config = request.config.model_config_list.config.add()
    config.name = media.random_name(rng)
    config.base_path = rng.choice(("/", "/etc", "../../", "/tmp/x"))
    draft.note(
        f"HandleReloadConfigRequest name={short(config.name)} base_path={config.base_path!r}", invalid=True
    )
    return draft, request.SerializeToString()


def health(rng: random.Random) -> tuple[Draft, bytes]:
    draft = Draft(method=HEALTH)
    service = rng.choice(("", PREDICTION_SERVICE, MODEL_SERVICE, "nope", media.random_name(rng)))
    draft.note(f"Health.Check service={short(service)}", unsure=True)
    return draft, health_pb2.HealthCheckRequest(service=service).SerializeToString()


# -- raw bytes ------------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + varint(len(payload)) + payload


def nested_variant_request(depth: int) -> bytes:
    """A PredictRequest whose input nests TensorProto -> variant_val -> tensors `depth` times."""
    tensor = b""
    for _ in range(depth):
        variant = _length_delimited(3, tensor)  # VariantTensorDataProto.tensors
        tensor = _key(1, 0) + varint(tensor_pb2.DT_VARIANT) + _length_delimited(15, variant)
    entry = _length_delimited(1, b"image") + _length_delimited(2, tensor)
    return _length_delimited(1, _length_delimited(1, b"digits")) + _length_delimited(2, entry)


def raw(rng: random.Random) -> tuple[Draft, bytes]:
    method = rng.choice((PREDICT, PREDICT, CLASSIFY, METADATA, STATUS, RELOAD, *UNKNOWN_METHODS))
    draft = Draft(method=method)
    unknown = method in UNKNOWN_METHODS
    kind = rng.choice(
        (
            "random", "flipped", "truncated", "trailing", "bad_utf8", "nested", "overlong_varint",
            "past_end", "field_zero", "huge_length", "group", "end_group", "wrong_wire_type",
        )
    )  # fmt: skip
    if method == PREDICT:
        valid = _predict(rng, Draft(method=PREDICT)).SerializeToString()
    else:
        valid = apis_pb2.GetModelStatusRequest(
            model_spec=apis_pb2.ModelSpec(name="digits")
        ).SerializeToString()
    surely = True  # the bytes are no valid message (upb refuses them)
    if kind == "random":
        payload = rng.randbytes(rng.choice((1, 2, 16, 256, 4096)))
        surely = False
    elif kind == "flipped":
        flipped = bytearray(valid)
        for _ in range(rng.randint(1, 8)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        payload, surely = bytes(flipped), False
    elif kind == "truncated":
        payload, surely = valid[: rng.randrange(1, len(valid))], False
    elif kind == "trailing":
        payload, surely = valid + rng.randbytes(rng.randint(1, 64)), False
    elif kind == "bad_utf8":
        payload = _length_delimited(1, _length_delimited(1, b"digits" + media.invalid_utf8(rng)))
    elif kind == "nested":
        depth = rng.choice((100, 101, 1000, 10_000))
        payload = nested_variant_request(depth)
        kind = f"nested depth {depth}"
        surely = method == PREDICT  # other messages skip the field as unknown... or refuse the depth
    elif kind == "overlong_varint":
        payload = _key(1, 0) + b"\xff" * 10 + b"\x01"
    elif kind == "past_end":
        payload = _key(1, 2) + varint(1000) + b"digits"
    elif kind == "field_zero":
        payload = b"\x00\x01" + valid
    elif kind == "huge_length":
        payload = _key(2, 2) + varint(2**62) + b"x"
    elif kind == "group":
        payload, surely = _key(5, 3) + _key(6, 0) + varint(1) + _key(5, 4) + valid, False  # unknown group
    elif kind == "end_group":
        payload = _key(5, 4) + valid  # an end-group tag with no group open
    else:
        payload, surely = _key(1, 0) + varint(7) + valid, False  # wire type mismatch: an unknown field
    draft.note(
        f"{kind} bytes ({len(payload)}B) to {method}",
        invalid=surely or unknown,
        unsure=not (surely or unknown),
    )
    return draft, payload


def predict_deadline(rng: random.Random) -> tuple[Draft, bytes]:
    """A valid Predict whose client gives up after 0.5-20 ms: the call leaves mid-queue or mid-run."""
    draft = Draft(method=PREDICT)
    request = _predict(rng, draft)
    deadline = rng.choice((0.0005, 0.002, 0.005, 0.02))
    draft.note(f"deadline {deadline * 1000:g} ms", unsure=True)
    draft.deadline = deadline
    return draft, request.SerializeToString()


Family = Callable[[random.Random], tuple[Draft, bytes]]

FAMILIES: tuple[tuple[str, int, Family], ...] = (
    ("valid.predict", 12, valid_predict),
    ("predict.tensor", 30, predict_tensor),
    ("predict.names", 10, predict_names),
    ("predict.output_filter", 7, predict_output_filter),
    ("predict.huge", 1, predict_huge),
    ("predict.deadline", 2, predict_deadline),
    ("classify", 12, classify),
    ("metadata", 7, metadata),
    ("status", 6, status),
    ("reload", 1, reload_config),
    ("health", 1, health),
    ("raw", 13, raw),
)
_BY_NAME = {name: builder for name, _, builder in FAMILIES}


def grpc_case(seed: int, index: int) -> GrpcCase:
    """Case `index` of the campaign seeded `seed`: the same arguments always give the same case."""
    rng = case_rng(seed, GRPC, index)
    family = weighted(rng, tuple((name, weight) for name, weight, _ in FAMILIES))
    draft, payload = _BY_NAME[family](rng)
    description = f"{draft.method.rsplit('/', 1)[-1] or draft.method} {draft.text}"
    return GrpcCase(index, family, description, draft.method, payload, draft.expect, draft.deadline)
