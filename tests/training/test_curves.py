"""Training curves mark the epoch the checkpoint keeps and where a two-stage run switched."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from training.common import best_epoch, plot_curves

HISTORY = {
    "loss": [1.0, 0.6, 0.5, 0.45, 0.3],
    "val_loss": [0.9, 0.6, 0.5, 0.55, 0.6],
    "accuracy": [0.5, 0.7, 0.75, 0.8, 0.85],
    "val_accuracy": [0.55, 0.7, 0.72, 0.71, 0.74],
}


def test_best_epoch_follows_the_monitor() -> None:
    assert best_epoch(HISTORY, "val_loss") == 3  # lowest loss
    assert best_epoch(HISTORY, "val_accuracy") == 5  # highest accuracy
    assert best_epoch({}, "val_loss") is None


def test_curves_carry_the_best_epoch_and_the_stage_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn: list[str] = []
    real_savefig = plt.Figure.savefig

    def keep_legends(figure: plt.Figure, *args: object, **kwargs: object) -> None:
        for axis in figure.axes:
            drawn.extend(text.get_text() for text in axis.get_legend().get_texts())
        real_savefig(figure, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", keep_legends)
    path = plot_curves(HISTORY, tmp_path / "curves.png", "run", monitor="val_loss", stages=[(2, "fine-tune")])
    assert Image.open(path).size == (1000, 400)
    assert drawn.count("best epoch 3 (val_loss)") == 2 and drawn.count("after epoch 2: fine-tune") == 2
