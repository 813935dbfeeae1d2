"""The run driver: a short real run against the tiny server, and its pure pieces."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtests.run import EntryStats, RunError, knees, parse_args, require_loopback, summarize
from tests.loadtests.test_workload import write_data_dir
from tests.serving.fixtures import REPO_ROOT, write_tiny_version


@pytest.mark.slow
def test_smoke_run_against_the_tiny_server(tmp_path: Path) -> None:
    """~15 s: start a server on 127.0.0.1, run all five users (both protocols) for 8 s, read the reports."""
    write_tiny_version(tmp_path / "models" / "digits", 1)
    out = tmp_path / "report"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.run", "--duration", "8", "--users", "5", "--p99-ms", "2000", "--transport", "all",
         "--start-server", "--models-dir", str(tmp_path / "models"), "--data-dir", str(write_data_dir(tmp_path / "data")),
         "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr + (out / "locust.log").read_text()
    assert time.monotonic() - started < 60
    assert "workload: digits:serving_default x3" in done.stdout
    assert "stopped: ran the full 8 s" in done.stdout.splitlines()  # said on the console, not only in locust.log
    assert "absent" not in done.stdout and "catdog: not served, skipped" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    rows = {(e["type"], e["name"]): e for e in summary["entries"]}
    assert set(rows) == {
        (kind, "digits:serving_default") for kind in ("grpc", "POST", "v2-grpc", "v2-rest", "v2-rest-json")
    }
    for row in rows.values():
        assert row["requests"] > 10 and row["failures"] == 0
        assert 0 < row["p50_ms"] <= row["p99_ms"] < 2000
    assert summary["problems"] == []
    assert (out / "report.html").stat().st_size > 10_000
    assert (out / "locust_stats.csv").is_file() and (out / "locust_stats_history.csv").is_file()
    assert "SERVING" in (out / "server.log").read_text() or "AVAILABLE" in (out / "server.log").read_text()


def test_unreachable_server_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.run", "--host", "127.0.0.1:1", "--out", str(tmp_path), "--duration", "1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "cannot reach the server at 127.0.0.1:1" in done.stderr


@pytest.mark.parametrize(
    "target",
    ["127.0.0.1:8500", "localhost:8500", "[::1]:8500", "dns:///localhost:8500", "http://127.0.0.1:8501"],
)
def test_loopback_targets_pass(target: str) -> None:
    require_loopback(target)


@pytest.mark.parametrize(
    "target", ["10.0.0.1:8500", "model-server:8500", "https://example.com", "ipv4:127.0.0.1:1,10.1.1.1:2"]
)
def test_other_targets_are_refused(target: str) -> None:
    with pytest.raises(RunError, match="only loopback"):
        require_loopback(target)


def _history(path: Path, rows: list[tuple[int, str, float, str]]) -> None:
    lines = ["Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,99%"]
    lines += [f"{t},1,{'grpc' if n != 'Aggregated' else ''},{n},{rps},0,1,{p99}" for t, n, rps, p99 in rows]
    path.write_text("\n".join(lines) + "\n")


def test_knee_per_model_is_the_rate_before_p99_crossed(tmp_path: Path) -> None:
    _history(
        tmp_path / "x_stats_history.csv",
        [
            (1, "digits:serving_default", 0.0, "N/A"),
            (2, "digits:serving_default", 40.0, "20"),
            (2, "digits:explain", 10.0, "30"),
            (3, "digits:serving_default", 70.0, "40"),
            (3, "digits:explain", 15.0, "90"),  # digits crosses here: its worst signature is over 50
            (4, "digits:serving_default", 90.0, "45"),
            (2, "sentiment:serving_default", 30.0, "80"),  # over the limit from the start
            (2, "Aggregated", 80.0, "30"),
            (3, "Aggregated", 85.0, "60"),
        ],
    )
    assert knees(tmp_path / "x", 50) == {"digits": 50.0, "sentiment": None, "Aggregated": 80.0}


def test_summary_fails_on_failures_and_slow_p99(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args(["--p99-ms", "100"])
    total = EntryStats("", "Aggregated", 30, 1, 3.0, 5, 150)
    entries = [
        EntryStats("grpc", "digits:serving_default", 20, 0, 2.0, 5, 50),
        EntryStats("POST", "catdog:explain", 10, 1, 1.0, 9, 150),
    ]
    problems = summarize(args, entries, total, {})
    assert problems == [
        "POST catdog:explain: 1 of 10 requests failed",
        "POST catdog:explain: p99 150 ms is over the 100 ms limit",
    ]
    assert "digits:serving_default" in capsys.readouterr().out
    assert summarize(args, [], None, {}) == ["no request was made"]


def test_step_shape_fails_only_a_model_over_the_limit_from_the_first_step(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = parse_args(["--shape", "step", "--p99-ms", "100"])
    entries = [
        EntryStats("grpc", "digits:serving_default", 20, 0, 2.0, 5, 400),  # crossed later: the knee
        EntryStats("grpc", "catdog:explain", 10, 0, 1.0, 90, 900),
    ]
    total = EntryStats("", "Aggregated", 30, 0, 3.0, 5, 900)
    problems = summarize(args, entries, total, {"digits": 250.0, "catdog": None, "Aggregated": 250.0})
    assert problems == ["catdog: p99 over the 100 ms limit from the first step"]
    out = capsys.readouterr().out
    assert "250.0 req/s" in out and "over the limit from the start" in out
