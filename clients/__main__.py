"""`python -m clients` / `ml-client`: predict, explain, activations, metadata and status from the command line.

    ml-client predict --model digits seven.png --top 3
    ml-client predict --model catdog photo.jpg             # sends the JPEG bytes (predict_image_bytes)
    ml-client predict --model sentiment "a gripping, funny film"
    ml-client explain --model catdog photo.jpg -o overlay.png [--raw heatmap.npy]
    ml-client activations --model catdog photo.jpg --layer conv_pw_1 -o grid.png   # one layer's channels
    ml-client --rest --url http://localhost:8501 status --model digits
    ml-client --protocol v2 predict --model digits seven.png   # the Open Inference Protocol (KServe V2)
    ml-client --token-file token.txt status --model digits   # a server started with --auth_token_file
    ml-client sample --model digits -o digit.png           # an MNIST test digit to try (no server needed)

Nothing is hard-coded per model: the CLI reads the signature's inputs from GetModelMetadata and sends
file bytes (a `*_bytes` string input), text (another string input) or a decoded image (a float
[N,H,W,C] input). Class names come from the server's Classify. Every failure ends with one line on
stderr and a non-zero exit: 1 when the server or the connection failed, 2 for bad flags or files.
The bearer token comes from `--token`, `--token-file` or else the environment variable
`ML_CLIENT_TOKEN`; calls the server answers UNAVAILABLE / RESOURCE_EXHAUSTED are retried `--retries`
times within `--timeout`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clients.auth import check_token, read_token_file
from clients.base import DEFAULT_TIMEOUT_S, Client
from clients.errors import ClientError
from clients.grids import activation_grid, grid_title, render_grid
from clients.images import ImageLoadError, Invert, load_image_tensor, load_photo, looks_grayscale, read_bytes
from clients.overlay import annotate, enlarge, overlay, save_png
from clients.retries import DEFAULT_RETRIES

PROG = "ml-client"
DEFAULT_SIGNATURE = "serving_default"
TOKEN_ENV = "ML_CLIENT_TOKEN"
PROTOCOLS = ("tfserving", "v2")
EXPLAIN_SIGNATURE = "explain"
ACTIVATIONS_SIGNATURE = "activations"
TEXT_SUFFIXES = (".txt", ".text")
# Server-side failures that mean "Classify is not offered here" (REST reports FAILED_PRECONDITION as 400).
_NO_CLASSIFY = ("FAILED_PRECONDITION", "UNIMPLEMENTED", "INVALID_ARGUMENT")


class UsageError(Exception):
    """A flag, file or input the CLI cannot use (exit status 2)."""


@dataclass(frozen=True)
class Request:
    """What goes over the wire for one command: the signature and its one input, N rows."""

    signature: str
    inputs: dict[str, np.ndarray]
    sources: list[str]  # one display name per row (file name or text)


# -- flags ---------------------------------------------------------------------------------------


def _connection_flags(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Flags accepted before and after the command; after it, only what is given overrides."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target",
        default=default("localhost:8500"),
        help="gRPC target (default localhost:8500; dns:///host:port balances over every address)",
    )
    group.add_argument(
        "--rest",
        action="store_true",
        default=default(False),
        help="use the REST API at --url instead of gRPC",
    )
    group.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=default("tfserving"),
        help="API to speak: TF Serving's (default) or the Open Inference Protocol (KServe V2, Triton)",
    )
    group.add_argument(
        "--url",
        default=default("http://localhost:8501"),
        help="REST base URL (default http://localhost:8501)",
    )
    group.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help="gRPC over TLS (REST: use an https:// --url)",
    )
    group.add_argument(
        "--ca",
        type=Path,
        default=default(None),
        help="PEM file of the CA that signed the server's certificate",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=default(DEFAULT_TIMEOUT_S),
        help="deadline of each call in seconds, retries included (default 30)",
    )
    group.add_argument(
        "--retries",
        type=_non_negative,
        default=default(DEFAULT_RETRIES),
        help=f"retries of a call answered UNAVAILABLE or RESOURCE_EXHAUSTED (default {DEFAULT_RETRIES}; 0: none)",
    )
    token = group.add_mutually_exclusive_group()
    token.add_argument(
        "--token",
        default=default(None),
        help=f"bearer token sent with every call (default: ${TOKEN_ENV} when set)",
    )
    token.add_argument(
        "--token-file",
        type=Path,
        default=default(None),
        help="file holding the bearer token (surrounding whitespace stripped)",
    )
    version = group.add_mutually_exclusive_group()
    version.add_argument(
        "--version", type=int, default=default(None), help="model version (default: the newest served)"
    )
    version.add_argument("--label", default=default(None), help="model version label, e.g. stable or canary")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Call the model server over gRPC (default) or REST."
    )
    _connection_flags(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--model", required=True, help="model name, e.g. digits, catdog, sentiment")
        _connection_flags(sub, suppress=True)
        return sub

    predict = command("predict", "classify images (PNG/JPEG/.npy files) or texts")
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, or texts for a text model")
    predict.add_argument("--signature", help="signature to call (default: chosen from the model's metadata)")
    predict.add_argument(
        "--top", type=_non_negative, default=3, help="classes to print per input (0: all; default 3)"
    )
    predict.add_argument(
        "--invert",
        choices=("auto", "yes", "no"),
        default="auto",
        help="invert grayscale images (auto: when the background is light, as MNIST digits are light on dark)",
    )

    explain = command("explain", "explain one prediction: Grad-CAM overlay PNG, or token importance for text")
    explain.add_argument("input", metavar="INPUT", help="an image file, or a text for a text model")
    explain.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("overlay.png"),
        help="overlay PNG to write for image models (default overlay.png)",
    )
    explain.add_argument("--raw", type=Path, help="also save the raw heatmap (or token importance) as .npy")
    explain.add_argument("--signature", default=EXPLAIN_SIGNATURE, help="signature to call (default explain)")
    explain.add_argument(
        "--invert",
        choices=("auto", "yes", "no"),
        default="auto",
        help="invert grayscale images (see predict)",
    )

    acts = command(
        "activations", "draw one layer's activations of an image, as the server computes them, as a grid PNG"
    )
    acts.add_argument("input", metavar="IMAGE", help="an image file (PNG/JPEG, or .npy)")
    acts.add_argument(
        "--layer",
        help="the layer to draw (required; without it, or with an unknown one, the served layers are listed)",
    )
    acts.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("activations.png"),
        help="grid PNG to write: every channel, each normalised (default activations.png)",
    )
    acts.add_argument("--raw", type=Path, help="also save the layer's activation [h,w,c] as .npy")
    acts.add_argument(
        "--signature", default=ACTIVATIONS_SIGNATURE, help="signature to call (default activations)"
    )
    acts.add_argument(
        "--invert",
        choices=("auto", "yes", "no"),
        default="auto",
        help="invert grayscale images (see predict)",
    )

    command("metadata", "print the model's signatures as JSON")
    command("status", "print the state of each version of the model")

    sample = command("sample", "write an example input for a model (from the test data under $DATA_DIR)")
    sample.add_argument(
        "-o", "--output", type=Path, help="file to write (default: digit.png, photo.jpg or review.txt)"
    )
    sample.add_argument("--index", type=_non_negative, default=0, help="which test example (default 0)")
    sample.add_argument(
        "--data-dir", type=Path, help="data folder (default: $DATA_DIR, else ../shared/data beside the repository)"
    )
    return parser


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def resolve_token(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> str | None:
    """The bearer token: --token-file, else --token, else $ML_CLIENT_TOKEN (None: send none)."""
    if args.token_file is not None:
        source, read = "--token-file", lambda: read_token_file(args.token_file)
    elif args.token is not None:
        source, read = "--token", lambda: check_token(args.token.strip())
    else:
        from_env = (os.environ if environ is None else environ).get(TOKEN_ENV, "").strip()
        if not from_env:
            return None
        source, read = f"${TOKEN_ENV}", lambda: check_token(from_env)
    try:
        return read()
    except ClientError as exc:
        raise UsageError(f"{source}: {exc.message}") from exc


def make_client(args: argparse.Namespace, token: str | None = None) -> Client:
    v2 = args.protocol == "v2"
    if args.rest:
        from clients.rest_client import RestClient
        from clients.v2_client import V2RestClient

        if args.tls and not args.url.startswith("https://"):
            raise UsageError(f"--tls with --rest needs an https:// --url, got {args.url}")
        return (V2RestClient if v2 else RestClient)(
            args.url, timeout=args.timeout, root_certificates=args.ca, token=token, retries=args.retries
        )
    from clients.grpc_client import GrpcClient
    from clients.v2_client import V2GrpcClient

    return (V2GrpcClient if v2 else GrpcClient)(
        args.target,
        tls=args.tls,
        root_certificates=args.ca,
        timeout=args.timeout,
        token=token,
        retries=args.retries,
    )


# -- deciding what to send -----------------------------------------------------------------------


def _only_input(name: str, signature: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    inputs = signature["inputs"]
    if len(inputs) != 1:
        raise UsageError(
            f"signature '{name}' takes {len(inputs)} inputs {sorted(inputs)}; the CLI sends one (use the Python library)"
        )
    ((input_name, spec),) = inputs.items()
    return input_name, spec


def _is_bytes_input(name: str, spec: Mapping[str, Any]) -> bool:
    return bool(spec["dtype"] == "string" and name.endswith("bytes"))


def _takes_bytes(signature: Mapping[str, Any]) -> bool:
    return any(_is_bytes_input(n, s) for n, s in signature["inputs"].items())


def _looks_like_image_file(value: str) -> bool:
    path = Path(value)
    return path.suffix.lower() != ".npy" and path.is_file()


def choose_predict_signature(signatures: Mapping[str, Mapping[str, Any]], values: Sequence[str]) -> str:
    """serving_default, unless it takes a decoded image and another predict signature takes the file bytes."""
    default = signatures.get(DEFAULT_SIGNATURE)
    if default is not None and any(s["dtype"] == "string" for s in default["inputs"].values()):
        return DEFAULT_SIGNATURE
    if all(_looks_like_image_file(v) for v in values):
        # A bytes signature that answers probabilities, the fewest outputs first: predict_image_bytes
        # rather than explain_image_bytes (+ heatmap); activations_image_bytes gives no probabilities.
        candidates = sorted(
            (len(signature["outputs"]), name)
            for name, signature in signatures.items()
            if name != EXPLAIN_SIGNATURE
            and len(signature["inputs"]) == 1
            and _takes_bytes(signature)
            and "probabilities" in signature["outputs"]
        )
        if candidates:
            return candidates[0][1]
    if default is None:
        raise UsageError(
            f"the model has no '{DEFAULT_SIGNATURE}' signature; pick one of {sorted(signatures)} with --signature"
        )
    return DEFAULT_SIGNATURE


def build_request(
    signatures: Mapping[str, Mapping[str, Any]],
    signature_name: str,
    values: Sequence[str],
    *,
    invert: Invert = "auto",
    prefer_bytes: bool = False,
) -> Request:
    """The tensors for `values` (files or texts) as the signature's one input asks for them.

    `prefer_bytes`: send a float `image` input as `image_bytes` (the server decodes it) when the
    model takes image bytes in some signature; explain uses it, so catdog's photo is not resized here.
    """
    if signature_name not in signatures:
        raise UsageError(f"the model has no signature '{signature_name}'; it has {sorted(signatures)}")
    input_name, spec = _only_input(signature_name, signatures[signature_name])
    is_text = spec["dtype"] == "string" and not input_name.endswith("bytes")
    sources = [v if is_text and not _is_file(v) else Path(v).name for v in values]
    if spec["dtype"] == "string":
        strings = np.empty(len(values), dtype=object)  # [N]
        if _is_bytes_input(input_name, spec):
            strings[:] = [_read_file(v) for v in values]
        else:
            strings[:] = [_text_of(v).encode("utf-8") for v in values]
        return Request(signature_name, {input_name: strings}, sources)
    shape = spec["shape"]
    model_takes_bytes = any(_takes_bytes(s) for s in signatures.values())
    if (
        prefer_bytes
        and model_takes_bytes
        and input_name == "image"
        and all(_looks_like_image_file(v) for v in values)
    ):
        blobs = np.empty(len(values), dtype=object)  # [N] encoded images
        blobs[:] = [_read_file(v) for v in values]
        return Request(signature_name, {"image_bytes": blobs}, sources)
    if len(shape) == 4 and all(d > 0 for d in shape[1:]):
        height, width, channels = shape[1:]
        batches = [
            load_image_tensor(v, height, width, channels, invert=invert) for v in values
        ]  # [n,H,W,C] each
        images = np.concatenate(batches).astype(np.dtype(spec["dtype"]))  # [N,H,W,C]
        return Request(signature_name, {input_name: images}, _row_sources(sources, batches))
    arrays = [_load_npy_input(v) for v in values]
    return Request(
        signature_name,
        {input_name: np.concatenate(arrays).astype(np.dtype(spec["dtype"]))},
        _row_sources(sources, arrays),
    )


def _row_sources(sources: Sequence[str], batches: Sequence[np.ndarray]) -> list[str]:
    names = []
    for source, batch in zip(sources, batches, strict=True):
        names += [source] if len(batch) == 1 else [f"{source}[{i}]" for i in range(len(batch))]
    return names


def _is_file(value: str) -> bool:
    try:
        return Path(value).is_file()
    except (OSError, ValueError):  # a long text is not a path
        return False


def _text_of(value: str) -> str:
    """The text to classify: `value` itself, or the contents of a .txt file; any other file is an error
    (a photo's path given to a text model would otherwise be classified as the words of its name)."""
    if not _is_file(value):
        return value
    path = Path(value)
    if path.suffix.lower() not in TEXT_SUFFIXES:
        raise UsageError(
            f"{value} is a file, not text: this model takes text; give the text itself (in quotes) "
            f"or a {'/'.join(TEXT_SUFFIXES)} file"
        )
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {value} as UTF-8 text: {exc}") from exc


def warn_about_inputs(signatures: Mapping[str, Mapping[str, Any]], values: Sequence[str]) -> list[str]:
    """Warnings for inputs the model will answer confidently but meaninglessly: a grayscale picture
    sent to a model of colour photos (catdog), since gray is repeated into three equal channels."""
    wants_colour = any(
        spec["dtype"] != "string" and len(spec["shape"]) == 4 and spec["shape"][-1] == 3
        for signature in signatures.values()
        for spec in signature["inputs"].values()
    )
    if not wants_colour:
        return []
    return [
        f"warning: {value} is a grayscale image; this model was trained on colour photos, so its answer means little"
        for value in values
        if _looks_like_image_file(value) and looks_grayscale(value)
    ]


def _read_file(value: str) -> bytes:
    try:
        return read_bytes(value)
    except ImageLoadError as exc:
        raise UsageError(str(exc)) from exc


def _load_npy_input(value: str) -> np.ndarray:
    if Path(value).suffix.lower() != ".npy":
        raise UsageError(f"{value}: this signature's input has no fixed image shape; give a .npy array")
    try:
        array = np.load(value, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {value}: {exc}") from exc
    return np.asarray(array)[None] if np.ndim(array) == 0 else np.asarray(array)


# -- calls and printing --------------------------------------------------------------------------


def classes_of(client: Client, args: argparse.Namespace, request: Request) -> list[list[tuple[str, float]]]:
    """(label, score) per class per row, through Classify; by class index when the model has no labels."""
    ((name, values),) = request.inputs.items()
    examples = [{name: row} for row in values]
    try:
        return client.classify(
            args.model, examples, signature=request.signature, version=args.version, label=args.label
        )
    except ClientError as exc:
        if exc.code not in _NO_CLASSIFY:
            raise
    outputs = client.predict(
        args.model,
        request.inputs,
        signature=request.signature,
        version=args.version,
        label=args.label,
        output_filter=["probabilities"],
    )
    return [[(str(i), float(p)) for i, p in enumerate(row)] for row in outputs["probabilities"]]


def format_classes(classes: Sequence[tuple[str, float]], top: int) -> list[str]:
    ranked = sorted(classes, key=lambda item: -item[1])
    width = max((len(label) for label, _ in ranked), default=0)
    return [f"  {label:<{width}}  {score:.4f}" for label, score in (ranked[:top] if top else ranked)]


def format_tokens(tokens: np.ndarray, importance: np.ndarray) -> list[str]:
    """One line per real token (padding "" left out): the token, its importance and a bar."""
    pairs = [
        (t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t), float(s))
        for t, s in zip(tokens.reshape(-1), importance.reshape(-1), strict=True)
    ]
    pairs = [(t, s) for t, s in pairs if t]
    if not pairs:
        return ["  (no tokens)"]
    width = max(len(t) for t, _ in pairs)
    scale = max(abs(s) for _, s in pairs) or 1.0
    return [
        f"  {t:<{width}}  {s:+.4f}  {('+' if s >= 0 else '-') * round(20 * abs(s) / scale)}" for t, s in pairs
    ]


def run_predict(client: Client, args: argparse.Namespace) -> None:
    signatures = client.metadata(args.model, args.version, args.label)["signatures"]
    name = args.signature or choose_predict_signature(signatures, args.inputs)
    request = build_request(signatures, name, args.inputs, invert=args.invert)
    for warning in warn_about_inputs(signatures, args.inputs):
        print(warning, file=sys.stderr)
    if name in signatures and "probabilities" in signatures[name]["outputs"]:
        for source, classes in zip(request.sources, classes_of(client, args, request), strict=True):
            print(source)
            print("\n".join(format_classes(classes, args.top)))
        return
    outputs = client.predict(
        args.model, request.inputs, signature=name, version=args.version, label=args.label
    )
    for row, source in enumerate(request.sources):
        print(source)
        for key, value in outputs.items():
            print(f"  {key}: {np.array2string(value[row], precision=4, threshold=20)}")


def run_explain(client: Client, args: argparse.Namespace) -> None:
    signatures = client.metadata(args.model, args.version, args.label)["signatures"]
    request = build_request(signatures, args.signature, [args.input], invert=args.invert, prefer_bytes=True)
    for warning in warn_about_inputs(signatures, [args.input]):
        print(warning, file=sys.stderr)
    outputs = client.predict(
        args.model, request.inputs, signature=request.signature, version=args.version, label=args.label
    )
    caption = ""
    if "probabilities" in outputs:
        label, score = max(classes_of(client, args, request)[0], key=lambda item: item[1])
        print(f"{request.sources[0]}: {label} ({score:.4f})")
        caption = f"{label} {100 * score:.1f}%"
    if "heatmap" in outputs:
        heatmap = outputs["heatmap"][0]  # [h, w] in 0..1
        try:
            photo = enlarge(load_photo(args.input))  # uint8 [H, W, 3]
        except ImageLoadError as exc:
            raise UsageError(str(exc)) from exc
        caption += f"  Grad-CAM {heatmap.shape[0]}x{heatmap.shape[1]}"
        _write(args.output, lambda path: save_png(annotate(overlay(photo, heatmap), caption.strip()), path))
        print(f"heatmap {heatmap.shape[0]}x{heatmap.shape[1]} over the image: wrote {args.output}")
        raw = heatmap
    elif "tokens" in outputs and "importance" in outputs:
        print("token importance (+: towards the predicted class)")
        print("\n".join(format_tokens(outputs["tokens"][0], outputs["importance"][0])))
        raw = outputs["importance"][0]
    else:
        raise UsageError(
            f"signature '{request.signature}' returned {sorted(outputs)}: no heatmap or token importance to show"
        )
    if args.raw is not None:
        _write(args.raw, lambda path: np.save(path, np.asarray(raw, dtype=np.float32)))
        print(f"wrote {args.raw}")


def run_activations(client: Client, args: argparse.Namespace) -> None:
    """One layer's activations from the server's `activations` signature (output_filter = the layer),
    drawn as the book draws them: every channel tiled, each normalised, layer name and shape on top."""
    signatures = client.metadata(args.model, args.version, args.label)["signatures"]
    if args.signature not in signatures:
        raise UsageError(
            f"model {args.model!r} has no '{args.signature}' signature (it has {sorted(signatures)}); "
            "activations are served for the convnets (digits, catdog) exported by this project"
        )
    layers = sorted(signatures[args.signature]["outputs"])
    served = f"{args.model} serves the activations of {len(layers)} layers: {', '.join(layers)}"
    if args.layer is None:
        raise UsageError(f"give --layer NAME; {served}")
    if args.layer not in layers:
        raise UsageError(f"no layer {args.layer!r}; {served}")
    request = build_request(signatures, args.signature, [args.input], invert=args.invert, prefer_bytes=True)
    for warning in warn_about_inputs(signatures, [args.input]):
        print(warning, file=sys.stderr)
    outputs = client.predict(
        args.model,
        request.inputs,
        signature=request.signature,
        version=args.version,
        label=args.label,
        output_filter=[args.layer],
    )
    activation = np.asarray(outputs[args.layer][0], dtype=np.float32)  # [h,w,c]
    if activation.ndim != 3:
        raise UsageError(
            f"layer {args.layer!r} answered shape {list(activation.shape)}, not a feature map [h,w,c]"
        )
    picture = render_grid(activation_grid(activation), grid_title(args.layer, activation))
    _write(args.output, lambda path: save_png(picture, path))
    height, width, channels = activation.shape
    print(
        f"{request.sources[0]}: {args.layer} {height}x{width}x{channels}, {channels} channels: "
        f"wrote {args.output} ({picture.shape[1]}x{picture.shape[0]} pixels)"
    )
    if args.raw is not None:
        _write(args.raw, lambda path: np.save(path, activation))
        print(f"wrote {args.raw}")


def _write(path: Path, writer: Any) -> None:
    try:
        writer(path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc


def run_metadata(client: Client, args: argparse.Namespace) -> None:
    print(json.dumps(client.metadata(args.model, args.version, args.label), indent=2))


def run_status(client: Client, args: argparse.Namespace) -> None:
    for entry in client.status(args.model, args.version, args.label):
        line = f"{args.model} version {entry.version}: {entry.state}"
        print(line + (f" ({entry.error})" if entry.error else ""))


COMMANDS = {
    "predict": run_predict,
    "explain": run_explain,
    "activations": run_activations,
    "metadata": run_metadata,
    "status": run_status,
}


def run_sample(args: argparse.Namespace) -> None:
    """No server needed: writes the example and says how to send it."""
    from clients.samples import DEFAULT_OUTPUT, SampleError, default_data_dir, write_sample

    output = args.output or Path(DEFAULT_OUTPUT.get(args.model, f"{args.model}.sample"))
    try:
        sample = write_sample(args.model, output, args.data_dir or default_data_dir(), args.index)
    except SampleError as exc:
        raise UsageError(str(exc)) from exc
    truth = f", label {sample.label}" if sample.label is not None else ""
    print(f"wrote {sample.path}: {sample.source}{truth}")
    if sample.generated:
        print(f"warning: {sample.path} is a generated stand-in, not real test data", file=sys.stderr)
    print(f"try: {PROG} predict --model {args.model} {sample.path}")


def connection_hint(exc: ClientError, args: argparse.Namespace) -> str:
    """' (start it with `make up`)' when nothing listens at the address: the usual first-run mistake."""
    text = exc.message.lower()
    refused = exc.code == "UNAVAILABLE" and (
        "connection refused" in text or "failed to connect" in text or "connect call failed" in text
    )
    if not refused:
        return ""
    where = args.url if args.rest else args.target
    return f"\n{PROG}: no server at {where} (start it with `make up`, or point --{'url' if args.rest else 'target'} at it)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version is not None and args.label is not None:
        parser.error("give --version or --label, not both")
    if args.token is not None and args.token_file is not None:  # one before the command, one after
        parser.error("give --token or --token-file, not both")
    if not 0 < args.timeout < float("inf"):
        parser.error(f"--timeout must be positive, got {args.timeout:g}")
    token: str | None = None
    try:
        if args.command == "sample":
            run_sample(args)
        else:
            token = resolve_token(args)
            with make_client(args, token) as client:
                COMMANDS[args.command](client, args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
    except ClientError as exc:
        status = f" (HTTP {exc.http_status})" if exc.http_status is not None and args.rest else ""
        hint = " (give --token or --token-file)" if exc.code == "UNAUTHENTICATED" and token is None else ""
        hint += connection_hint(exc, args)
        print(f"{PROG}: {exc.code}{status}: {exc.message}{hint}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`ml-client ... | head`): stop quietly, as cat and grep do. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (UsageError, ImageLoadError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
