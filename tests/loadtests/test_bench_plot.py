"""`make bench` draws its table: req/s and p99 against callers, one line per transport and batching mode."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from loadtests.bench import Point, plot_points


def test_the_plot_has_one_line_per_transport_and_batching_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [
        Point(transport, batching, callers, requests=callers * 1000, errors=0, seconds=1.0, p50_ms=1.0, p99_ms=callers / 2)
        for transport in ("grpc", "rest")
        for batching in (False, True)
        for callers in (1, 8, 32)
    ]
    lines: dict[str, list[tuple[float, ...]]] = {}
    real_savefig = plt.Figure.savefig

    def keep_lines(figure: plt.Figure, *args: object, **kwargs: object) -> None:
        for axis in figure.axes:
            for line in axis.get_lines():
                lines.setdefault(f"{axis.get_ylabel()} | {line.get_label()}", []).append(tuple(line.get_ydata()))
        real_savefig(figure, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", keep_lines)
    path = plot_points(points, tmp_path / "bench" / "bench.png", "digits")
    assert Image.open(path).size == (1000, 400)
    assert lines["requests per second | grpc, batching on"] == [(1000.0, 8000.0, 32000.0)]
    assert lines["p99 latency (ms) | rest, batching off"] == [(0.5, 4.0, 16.0)]
    assert len(lines) == 8  # 2 panels x 2 transports x 2 batching modes
