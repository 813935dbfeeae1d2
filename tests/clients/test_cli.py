"""`python -m clients` end to end: real subprocesses for the user-facing paths, main() for the rest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clients.__main__ import format_classes, format_tokens, main
from clients.images import load_image_tensor
from tests.serving.fixtures import REPO_ROOT, ServerProcess, reference_probabilities

pytestmark = pytest.mark.slow


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clients", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )


def _flags(server: ServerProcess) -> list[str]:
    return ["--target", server.grpc_target, "--url", server.rest_url, "--timeout", "10"]


def test_predict_png_prints_the_top_classes(server: ServerProcess, models_dir: Path, digit_png: Path) -> None:
    done = run_cli(*_flags(server), "predict", "--model", "digits", str(digit_png), "--top", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "seven.png" and len(lines) == 4
    image = load_image_tensor(digit_png, 28, 28, 1, invert="auto")  # [1,28,28,1], light digit on dark
    expected = reference_probabilities(models_dir / "digits" / "1", image)[0]  # [10]
    label, score = lines[1].split()
    assert int(label) == int(expected.argmax())
    assert float(score) == pytest.approx(float(expected.max()), abs=1e-4)


def test_metadata_and_status_over_rest(server: ServerProcess) -> None:
    done = run_cli("--rest", *_flags(server), "metadata", "--model", "catdog")
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(done.stdout)["signatures"]) == [
        "explain",
        "predict_image_bytes",
        "serving_default",
    ]
    done = run_cli("status", "--model", "sentiment", *_flags(server))  # flags after the command work too
    assert (done.returncode, done.stdout) == (0, "sentiment version 1: AVAILABLE\n")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["status", "--model", "nope"], 1, "ml-client: NOT_FOUND: "),
        (["--rest", "status", "--model", "nope"], 1, "ml-client: NOT_FOUND (HTTP 404): "),
        (
            ["predict", "--model", "digits", "/no/such/file.png"],
            2,
            "ml-client: error: cannot read /no/such/file.png",
        ),
        (["predict", "--model", "digits", "--top", "-1", "x.png"], 2, "--top: must be >= 0"),
        (["frobnicate"], 2, "invalid choice"),
    ],
)
def test_failures_exit_non_zero_with_one_line(
    server: ServerProcess, args: list[str], code: int, message: str
) -> None:
    done = run_cli(*_flags(server), *args)
    assert done.returncode == code
    assert message in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].count("\n") == 0


def test_unreachable_server_exits_1() -> None:
    assert main(["--target", "127.0.0.1:1", "--timeout", "2", "status", "--model", "digits"]) == 1


def test_catdog_predict_sends_bytes_and_explain_writes_overlay(
    server: ServerProcess, red_jpeg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for transport in ([], ["--rest"]):
        assert main([*transport, *_flags(server), "predict", "--model", "catdog", str(red_jpeg)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == "red.jpg" and lines[1].split()[0] == "cat" and float(lines[1].split()[1]) > 0.99
        overlay_path, raw_path = tmp_path / "overlay.png", tmp_path / "heatmap.npy"
        args = [
            "explain",
            "--model",
            "catdog",
            str(red_jpeg),
            "-o",
            str(overlay_path),
            "--raw",
            str(raw_path),
        ]
        assert main([*transport, *_flags(server), *args]) == 0
        out = capsys.readouterr().out
        assert out.startswith("red.jpg: cat (")
        with Image.open(overlay_path) as written:
            # enlarged to >= 224 px, plus the colour scale (14 px bar + 24 px for its labels) on the right
            assert written.mode == "RGB" and written.size == (30 * 8 + 38, 40 * 8)
            pixels = np.asarray(written)
            top, middle, bottom = pixels[16, 30 * 8 + 10], pixels[160, 30 * 8 + 10], pixels[40 * 8 - 16, 30 * 8 + 10]
            assert top[0] > 100 and top[2] < 60 and bottom[2] > 100 and bottom[0] < 60  # jet: red 1, blue 0
            assert middle[1] > 200  # green in the middle
            assert pixels[:18, :100].mean() < pixels[40:, :100].mean()  # the caption's dark band
        heatmap = np.load(raw_path)
        assert heatmap.shape == (4, 4) and heatmap.dtype == np.float32


def test_catdog_predict_prints_labels(
    server: ServerProcess, red_jpeg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*_flags(server), "predict", "--model", "catdog", str(red_jpeg), "--top", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "red.jpg"
    assert [line.split()[0] for line in lines[1:]] == ["cat", "dog"]


def test_sentiment_predict_sends_text(server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "--rest",
                *_flags(server),
                "predict",
                "--model",
                "sentiment",
                "great fun",
                "dull and awful",
                "--top",
                "1",
            ]
        )
        == 0
    )
    # Logits are sums of 2-d embeddings: great (-2, 2) + fun (-1, 1) = (-3, 3) -> softmax 0.9975.
    assert capsys.readouterr().out.splitlines() == [
        "great fun",
        "  positive  0.9975",
        "dull and awful",
        "  negative  0.9975",
    ]


def test_explain_without_explain_signature_is_a_usage_error(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*_flags(server), "explain", "--model", "sentiment", "great fun"]) == 2
    assert "has no signature 'explain'" in capsys.readouterr().err


def test_unwritable_overlay_is_a_usage_error(
    server: ServerProcess, red_jpeg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["explain", "--model", "catdog", str(red_jpeg), "-o", "/no/such/dir/overlay.png"]
    assert main([*_flags(server), *args]) == 2
    assert "cannot write /no/such/dir/overlay.png" in capsys.readouterr().err


def test_format_classes_and_tokens() -> None:
    assert format_classes([("cat", 0.25), ("dog", 0.75)], top=1) == ["  dog  0.7500"]
    tokens = np.array([b"great", b"dull", b"", b""], dtype=object)  # [L], padding ""
    importance = np.array([0.5, -0.25, 0.0, 0.0], dtype=np.float32)
    lines = format_tokens(tokens, importance)
    assert lines == ["  great  +0.5000  ++++++++++++++++++++", "  dull   -0.2500  ----------"]


@pytest.mark.parametrize(
    "args",
    [
        ["--version", "1", "status", "--model", "digits", "--label", "stable"],
        ["--timeout", "0", "status", "--model", "digits"],
        ["status"],
    ],
)
def test_bad_flags_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(args)
    assert raised.value.code == 2
    assert "ml-client" in capsys.readouterr().err
