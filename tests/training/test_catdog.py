"""Cats vs dogs training: the dataset layout, the PetImages download + split, the four approaches.

Photos are generated: reddish squares play cats, bluish squares play dogs (32x32 JPEGs), so a model
learns them in seconds. Pretrained bases are built with random weights (`--weights none`).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.common import MissingDataError
from training.datasets import cats_vs_dogs


def tiny_photo(label: int, seed: int, size: int = 32) -> bytes:
    """A noisy reddish (cat, 0) or bluish (dog, 1) square with a lighter blob, as JPEG bytes."""
    rng = np.random.default_rng(seed)
    color = np.array([200, 60, 50] if label == 0 else [50, 70, 200], dtype=np.float32)
    pixels = color + rng.normal(0, 25, (size, size, 3))
    top, left = rng.integers(0, size // 2, 2)
    pixels[top : top + size // 3, left : left + size // 3] += 40
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_tiny_dataset(root: Path, counts: dict[str, int] | None = None) -> Path:
    counts = counts or {"train": 24, "validation": 8, "test": 8}
    seed = 0
    for split, per_class in counts.items():
        for label, (name, folder) in enumerate(
            zip(cats_vs_dogs.LABELS, cats_vs_dogs.CLASS_FOLDERS, strict=True)
        ):
            target = root / split / folder
            target.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                seed += 1
                (target / f"{name}.{index}.jpg").write_bytes(tiny_photo(label, seed))
    return root


def fake_petimages(path: Path, per_class: int = 9) -> Path:
    """A zip shaped like Microsoft's archive, with the kinds of broken files the real one holds."""
    with zipfile.ZipFile(path, "w") as archive:
        for label, folder in enumerate(("Cat", "Dog")):
            for number in range(per_class):
                data = tiny_photo(label, 100 * label + number)
                if number == 1:
                    data = b""  # PetImages has empty files
                elif number == 2:
                    data = data[: len(data) // 2]  # truncated JPEG
                elif number == 3:
                    buffer = io.BytesIO()
                    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
                    data = buffer.getvalue()  # not a JPEG despite its name
                archive.writestr(f"PetImages/{folder}/{number}.jpg", data)
            archive.writestr(f"PetImages/{folder}/Thumbs.db", b"junk")
        archive.writestr("readme[1].txt", "fake")
    return path


# --- data ----------------------------------------------------------------------------------------


def test_missing_dataset_says_what_and_where(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match="cats_vs_dogs") as caught:
        cats_vs_dogs.locate(tmp_path)
    assert "--download" in str(caught.value) and cats_vs_dogs.PETIMAGES_URL in str(caught.value)
    with pytest.raises(MissingDataError, match="layout"):
        cats_vs_dogs.locate(tmp_path, dataset_dir=tmp_path)


def test_split_petimages_skips_corrupt_files_in_number_order(tmp_path: Path) -> None:
    archive = fake_petimages(tmp_path / "pets.zip", per_class=12)
    written = cats_vs_dogs.split_petimages(
        archive, tmp_path / "out", {"train": 3, "validation": 3, "test": 2}
    )
    assert written["train"] == {"cats": 3, "dogs": 3}
    names = sorted(p.name for p in (tmp_path / "out" / "train" / "cats").iterdir())
    assert names == ["cat.0.jpg", "cat.4.jpg", "cat.5.jpg"]  # 1 (empty), 2 (truncated), 3 (PNG) skipped
    assert sorted(p.name for p in (tmp_path / "out" / "test" / "dogs").iterdir()) == [
        "dog.10.jpg",
        "dog.9.jpg",
    ]
    assert cats_vs_dogs.has_layout(tmp_path / "out")
    assert not (tmp_path / "out.partial").exists()
    with pytest.raises(MissingDataError, match="valid cat photos"):
        cats_vs_dogs.split_petimages(archive, tmp_path / "big", {"train": 10, "validation": 2, "test": 2})


def test_locate_downloads_and_splits_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = fake_petimages(tmp_path / "source.zip", per_class=10)
    fetched: list[str] = []

    def fake_download(url: str, destination: Path, timeout: float = 60.0) -> Path:
        fetched.append(url)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(source.read_bytes())
        return destination

    monkeypatch.setattr(cats_vs_dogs, "download_file", fake_download)
    monkeypatch.setattr(cats_vs_dogs, "BOOK_SPLIT", {"train": 3, "validation": 2, "test": 2})
    data_dir = tmp_path / "data"
    root = cats_vs_dogs.locate(data_dir, download=True)
    assert root == data_dir / "cats_vs_dogs" and cats_vs_dogs.has_layout(root)
    assert fetched == [cats_vs_dogs.PETIMAGES_URL]
    assert cats_vs_dogs.locate(data_dir, download=True) == root and len(fetched) == 1


def test_load_split_decodes_like_the_server(tmp_path: Path) -> None:
    from serving.images import decode_image

    root = write_tiny_dataset(tmp_path / "cvd", {"train": 4, "validation": 2, "test": 3})
    split = cats_vs_dogs.load_split(root, "test", (20, 24))
    assert split.images.shape == (6, 20, 24, 3) and split.images.dtype == np.float32
    assert split.labels.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_allclose(
        split.images[4], decode_image(split.paths[4].read_bytes(), 20, 24, 3), atol=1e-3
    )
    few = cats_vs_dogs.load_split(root, "test", (8, 8), limit=2)
    assert few.labels.tolist() == [0, 1]  # a limit keeps both classes


# --- models --------------------------------------------------------------------------------------


def test_caffe_preprocessing_matches_keras() -> None:
    import keras

    from training.catdog import preprocessing_layer

    images = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    expected = keras.applications.vgg16.preprocess_input(images.copy())
    np.testing.assert_allclose(np.asarray(preprocessing_layer("caffe")(images)), expected, atol=1e-4)
    np.testing.assert_allclose(np.asarray(preprocessing_layer("tf")(images)), images / 127.5 - 1, atol=1e-6)


def test_fine_tuning_unfreezes_the_top_block_with_batchnorm_in_inference_mode() -> None:
    import keras

    from training.catdog import BASES, build_transfer_model, last_conv_layer, unfreeze_top_block

    model = build_transfer_model(BASES["mobilenet"], None, 32)
    assert model.get_layer("conv_pw_13").trainable is False and model.get_layer("pool").trainable
    assert last_conv_layer(model) == "conv_pw_13_relu"
    unfrozen = unfreeze_top_block(model, "conv_dw_13")
    assert unfrozen == ["conv_dw_13", "conv_pw_13", "dense", "probabilities"]
    assert not model.get_layer("conv_dw_13_bn").trainable and not model.get_layer("conv_pw_12").trainable
    trainable = [variable.path for variable in model.trainable_variables]
    assert trainable[:2] == ["conv_dw_13/kernel", "conv_pw_13/kernel"] and len(trainable) == 6

    bn = model.get_layer("conv_pw_13_bn")
    moving_mean = bn.moving_mean.numpy()
    frozen_kernel = model.get_layer("conv_pw_12").kernel.numpy()
    head_bias = model.get_layer("probabilities").bias.numpy()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    model.fit(images, np.zeros(8, dtype=np.int64), epochs=1, verbose=0)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), moving_mean)  # inference mode: no update
    np.testing.assert_array_equal(model.get_layer("conv_pw_12").kernel.numpy(), frozen_kernel)
    # (With random base weights the block's activations vanish, so only the output bias visibly moves.)
    assert not np.array_equal(model.get_layer("probabilities").bias.numpy(), head_bias)
    # Control: the same fit with that BatchNormalization layer trainable does update its statistics.
    bn.trainable = True
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    model.fit(images, np.zeros(8, dtype=np.int64), epochs=1, verbose=0)
    assert not np.array_equal(bn.moving_mean.numpy(), moving_mean)


@pytest.mark.slow
def test_all_four_approaches_train_and_compare(tmp_path: Path) -> None:
    import keras

    from training import catdog

    root = write_tiny_dataset(tmp_path / "cvd")
    out = tmp_path / "run"
    argv = ["--approach", "all", "--dataset-dir", str(root), "--out", str(out), "--weights", "none"]
    argv += ["--image-size", "32", "--scratch-image-size", "32", "--epochs-scale", "0.1", "--threads", "2"]
    assert catdog.main(argv) == 0

    combined = json.loads((out / "metrics.json").read_text())
    assert set(combined["approaches"]) == set(catdog.APPROACHES)
    assert combined["test_accuracy"] == combined["approaches"]["finetune"]["test_accuracy"]
    for approach, metrics in combined["approaches"].items():
        assert 0.0 <= metrics["validation_accuracy"] <= 1.0 and metrics["n_test"] == 16, approach
        assert metrics["seconds"] > 0 and (out / approach / "curves.png").stat().st_size > 0
        model = keras.models.load_model(out / approach / catdog.BEST_MODEL, compile=False)
        assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 2)
        assert model.get_layer(metrics["last_conv_layer"]).output.shape[-1] > 0
    # Colours are trivially separable: the convnet from scratch must get them (the pipeline learns).
    assert combined["approaches"]["scratch"]["test_accuracy"] >= 0.9
    assert combined["approaches"]["finetune"]["unfrozen_layers"][0] == "conv_dw_13"
    table = (out / "comparison.md").read_text().splitlines()
    assert len(table) == 2 + 4 and table[-1].startswith("| 4. fine-tuned")
    assert (out / "curves.png").stat().st_size > 0


def test_cli_reports_missing_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training import catdog

    assert (
        catdog.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "run"), "--weights", "none"]) == 2
    )
    assert "cats_vs_dogs" in capsys.readouterr().err
