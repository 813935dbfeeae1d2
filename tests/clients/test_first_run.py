"""The first ten minutes on the command line: `ml-client sample`, inputs that do not fit the model,
no server running, output piped into `head`. Real subprocesses against the session's server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clients.samples import default_data_dir, write_sample
from tests.serving.fixtures import REPO_ROOT, ServerProcess

pytestmark = pytest.mark.slow
DATA_DIR = default_data_dir()
needs_data = pytest.mark.skipif(
    not (DATA_DIR / "mnist").is_dir(), reason=f"no shared data at {DATA_DIR} (see ../shared/data/README.md)"
)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clients", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def _flags(server: ServerProcess) -> list[str]:
    return ["--target", server.grpc_target, "--url", server.rest_url, "--timeout", "10"]


@needs_data
def test_sample_digit_is_the_mnist_test_digit_and_predicts(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "digit.png"
    done = run_cli("sample", "--model", "digits", "-o", str(out), "--index", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"wrote {out}: MNIST test digit #1 (mnist/t10k-images-idx3-ubyte.gz), label 2"
    pixels = np.asarray(Image.open(out))
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
    assert pixels[0].max() == 0 and pixels.max() == 255  # light digit on black, as MNIST stores it
    done = run_cli(*_flags(server), "predict", "--model", "digits", str(out), "--top", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "digit.png"


@needs_data
def test_sample_photo_and_review_come_from_the_test_data(server: ServerProcess, tmp_path: Path) -> None:
    cat, dog = write_sample("catdog", tmp_path / "a.jpg", DATA_DIR, 0), write_sample("catdog", tmp_path / "b.jpg", DATA_DIR, 1)
    assert (cat.label, dog.label, cat.generated) == ("cat", "dog", False)
    assert Image.open(cat.path).format == "JPEG"
    review = tmp_path / "review.txt"
    done = run_cli("sample", "--model", "sentiment", "-o", str(review), "--index", "2")
    assert done.returncode == 0, done.stderr
    text = review.read_text().strip()
    assert text and "label positive" in done.stdout.splitlines()[0]
    # a .txt file given to the text model is classified by its contents, shown under its name
    done = run_cli(*_flags(server), "predict", "--model", "sentiment", str(review))
    by_text = run_cli(*_flags(server), "predict", "--model", "sentiment", text)
    assert done.returncode == 0 and by_text.returncode == 0, done.stderr + by_text.stderr
    assert done.stdout.splitlines()[0] == "review.txt"
    assert done.stdout.splitlines()[1:] == by_text.stdout.splitlines()[1:]


def test_without_data_a_generated_stand_in_is_written_and_said_so(tmp_path: Path) -> None:
    empty = tmp_path / "no-data"
    empty.mkdir()
    for model, name in (("digits", "d.png"), ("catdog", "c.jpg"), ("sentiment", "s.txt")):
        done = run_cli("sample", "--model", model, "-o", str(tmp_path / name), env={"DATA_DIR": str(empty)})
        assert done.returncode == 0, done.stderr
        assert "generated stand-in, not real test data" in done.stderr
        assert (tmp_path / name).stat().st_size > 0
    drawn = np.asarray(Image.open(tmp_path / "d.png"))
    assert drawn.shape == (28, 28) and drawn.max() > 200 and drawn[0].max() == 0


def test_sample_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    done = run_cli("sample", "--model", "nope", "-o", str(tmp_path / "x"))
    assert (done.returncode, done.stderr.strip()) == (
        2,
        "ml-client: error: no sample for model 'nope'; samples exist for digits, catdog, sentiment",
    )
    if (DATA_DIR / "mnist").is_dir():
        done = run_cli("sample", "--model", "digits", "--index", "10000", "-o", str(tmp_path / "x.png"))
        assert done.returncode == 2 and "the MNIST test set has 10000 digits" in done.stderr


def test_an_image_path_given_to_the_text_model_is_an_error(server: ServerProcess, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(photo)
    done = run_cli(*_flags(server), "predict", "--model", "sentiment", str(photo))
    assert done.returncode == 2
    assert f"{photo} is a file, not text: this model takes text" in done.stderr


def test_a_grayscale_picture_sent_to_catdog_gets_a_warning(server: ServerProcess, tmp_path: Path, red_jpeg: Path) -> None:
    gray = tmp_path / "gray.png"
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))).save(gray)
    done = run_cli(*_flags(server), "predict", "--model", "catdog", str(gray))
    assert done.returncode == 0, done.stderr
    assert f"warning: {gray} is a grayscale image" in done.stderr
    done = run_cli(*_flags(server), "predict", "--model", "catdog", str(red_jpeg))
    assert done.returncode == 0 and "grayscale" not in done.stderr
    done = run_cli(*_flags(server), "predict", "--model", "digits", str(gray))  # digits are gray: no warning
    assert done.returncode == 0 and "grayscale" not in done.stderr


@pytest.mark.parametrize("rest", [False, True])
def test_no_server_says_how_to_start_one(rest: bool) -> None:
    # Port 1 is privileged: nothing listens there on a test machine, so the connection is refused.
    flags = ["--rest", "--url", "http://127.0.0.1:1"] if rest else ["--target", "127.0.0.1:1"]
    done = run_cli(*flags, "--retries", "0", "--timeout", "5", "status", "--model", "digits")
    where = "http://127.0.0.1:1" if rest else "127.0.0.1:1"
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"ml-client: no server at {where} (start it with `make up`, or point --{'url' if rest else 'target'} at it)"
    )


def test_output_into_a_closed_pipe_ends_quietly(server: ServerProcess) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before anything is written, as `| head -0` does
    try:
        done = subprocess.run(
            [sys.executable, "-m", "clients", *_flags(server), "metadata", "--model", "catdog"],
            cwd=REPO_ROOT,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (0, "")
