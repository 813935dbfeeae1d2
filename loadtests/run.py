"""`python -m loadtests.run` (`make loadtest`): one bounded, headless Locust run with a summary.

    python -m loadtests.run --duration 60 --users 20 --shape steady --p99-ms 250 --out reports/loadtest
    python -m loadtests.run --start-server --models-dir models --shape step --p99-ms 100

Optionally starts a local server (`--start-server`: every model folder under `--models-dir`, bound
to 127.0.0.1 on free ports), checks what it serves, runs Locust headless with
`loadtests/locustfile.py` and `loadtests/shapes.py` (stopping by itself after `--duration` seconds or
`--max-requests` requests), writes Locust's CSV and HTML reports to `--out`, and prints req/s, p50
and p99 per model and signature (and, for the step shape, the knee: the highest req/s reached
before p99 crossed `--p99-ms`). Only loopback targets are accepted.

Exit status: 0 when every request succeeded and (steady, spike) every p99 stayed under the limit;
1 when a request failed, a p99 crossed the limit or nothing was sent; 2 for bad flags or when the
server cannot be started or reached.
"""

from __future__ import annotations

import argparse
import csv
import ipaddress
import json
import math
import os
import re
import shlex
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from clients.errors import ClientError
from clients.grpc_client import GrpcClient
from loadtests.workload import DEFAULT_MODELS, build_plan, default_data_dir, load_samples
from serving.launcher import LaunchError, ServerProcess, launch, write_model_config

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILES = "loadtests/locustfile.py,loadtests/shapes.py"
V2_USERS = ["V2GrpcUser", "V2RestUser", "V2RestJsonUser"]
USER_CLASSES = {
    "grpc": ["GrpcUser"],
    "rest": ["RestUser"],
    "both": ["GrpcUser", "RestUser"],  # TF Serving's API over both transports
    "v2-grpc": ["V2GrpcUser"],
    "v2-rest": ["V2RestUser"],
    "v2-rest-json": ["V2RestJsonUser"],
    "v2": V2_USERS,  # the Open Inference Protocol: gRPC, REST binary, REST JSON
    "all": ["GrpcUser", "RestUser", *V2_USERS],
}
GRACE_S = 90  # beyond --duration: start-up, the final stop, report writing


class RunError(Exception):
    """The run could not be set up (exit status 2)."""


@dataclass(frozen=True)
class EntryStats:
    """One row of Locust's stats: a (request type, model:signature) pair."""

    type: str
    name: str
    requests: int
    failures: int
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    knee_rps: float | None = None


# -- flags ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=60, help="seconds of load (default 60)")
    parser.add_argument(
        "--users", type=int, default=10, help="concurrent users (peak for step and spike; default 10)"
    )
    parser.add_argument(
        "--spawn-rate", type=float, default=0.0, help="users started per second (default: --users)"
    )
    parser.add_argument("--shape", choices=("steady", "step", "spike"), default="steady")
    parser.add_argument(
        "--p99-ms", type=float, default=500.0, help="p99 limit per model and signature in ms (default 500)"
    )
    parser.add_argument(
        "--step-users", type=int, default=0, help="step shape: users added per step (default users/5)"
    )
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=0.0,
        help="step shape: seconds per step (default duration/steps)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("reports/loadtest"), help="report folder (default reports/loadtest)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1:8500", help="gRPC address of the server (default 127.0.0.1:8500)"
    )
    parser.add_argument("--rest-url", default="", help="REST base URL (default http://<host>:8501)")
    parser.add_argument(
        "--transport", choices=sorted(USER_CLASSES), default="both", help="which users to run: TF Serving's API (grpc, rest, both: the default), the Open Inference Protocol "
        "(v2-grpc, v2-rest binary, v2-rest-json, v2: the three) or all five"
    )
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="models to load if served")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="samples (default: $DATA_DIR or ../shared/data)"
    )
    parser.add_argument(
        "--think-ms", type=float, default=50.0, help="mean wait between a user's requests (default 50)"
    )
    parser.add_argument(
        "--max-requests", type=int, default=1_000_000, help="stop after this many requests (default 1e6)"
    )
    parser.add_argument(
        "--start-server", action="store_true", help="start a local server on 127.0.0.1 for the run"
    )
    parser.add_argument(
        "--models-dir", type=Path, default=Path("models"), help="with --start-server: the model repository"
    )
    parser.add_argument(
        "--server-args", default="", help='with --start-server: extra server flags, e.g. "--enable_batching"'
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.users <= 0 or args.max_requests <= 0:
        parser.error("--duration, --users and --max-requests must be positive")
    if args.p99_ms <= 0:
        parser.error("--p99-ms must be positive")
    return args


def _hosts(address: str) -> list[str]:
    """Host names in a URL or a gRPC target (`host:port`, `dns:///host:port`, `ipv4:a:p,b:p`)."""
    if address.startswith(("http://", "https://")):
        return [urlsplit(address).hostname or ""]
    for scheme in ("dns:", "ipv4:", "ipv6:"):
        if address.startswith(scheme):
            address = address[len(scheme) :]
            if address.startswith("//"):  # dns://[authority]/host:port
                address = address[2:].split("/", 1)[-1]
            break
    hosts = []
    for part in address.split(","):
        if part.startswith("["):
            hosts.append(part[1 : part.find("]")])
        elif part.count(":") == 1:
            hosts.append(part.split(":")[0])
        else:
            hosts.append(part)
    return hosts


def require_loopback(address: str) -> None:
    """Refuse any target but this machine: a load test must never hit someone else's server by mistake."""
    for host in _hosts(address):
        if host in ("localhost", "ip6-localhost"):
            continue
        try:
            if ipaddress.ip_address(host).is_loopback:
                continue
        except ValueError:
            pass
        raise RunError(f"{address}: only loopback targets (127.0.0.1, ::1, localhost) are allowed")


# -- a local server ------------------------------------------------------------------------------


def model_folders(models_dir: Path) -> dict[str, Path]:
    """name -> base path for every folder holding at least one integer version folder."""
    if not models_dir.is_dir():
        raise RunError(f"--models-dir {models_dir} is not a folder")
    found = {
        child.name: child.resolve()
        for child in sorted(models_dir.iterdir())
        if child.is_dir() and any(v.is_dir() and v.name.isdigit() for v in child.iterdir())
    }
    if not found:
        raise RunError(
            f"no model in {models_dir} (expected <name>/<version>/ folders); run `make up` or the exporter first"
        )
    return found


class LocalServer:
    """`python -m serving` on 127.0.0.1 with free ports, for the length of the run."""

    def __init__(self, models: dict[str, Path], out: Path, extra_args: Sequence[str] = ()) -> None:
        self.config = write_model_config(out / "models.config", models)
        self.log_path = out / "server.log"
        self.extra_args = list(extra_args)
        self.server: ServerProcess | None = None

    @property
    def grpc_port(self) -> int:
        return self.server.grpc_port if self.server else 0

    @property
    def rest_port(self) -> int:
        return self.server.rest_port if self.server else 0

    def start(self, timeout: float = 120) -> None:
        try:
            self.server = launch(
                ["--model_config_file", str(self.config), *self.extra_args], self.log_path, timeout
            )
        except LaunchError as exc:
            raise RunError(f"{str(exc).splitlines()[0]}; see {self.log_path}") from exc

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


# -- reading Locust's CSV ------------------------------------------------------------------------


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None  # "N/A"
    return None if math.isnan(value) else value


def read_stats(prefix: Path) -> tuple[list[EntryStats], EntryStats | None]:
    """Per-entry rows and the Aggregated row of `<prefix>_stats.csv`."""
    path = Path(f"{prefix}_stats.csv")
    if not path.is_file():
        return [], None
    entries, total = [], None
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            entry = EntryStats(
                type=row["Type"],
                name=row["Name"],
                requests=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                rps=_number(row["Requests/s"]) or 0.0,
                p50_ms=_number(row["50%"]),
                p99_ms=_number(row["99%"]),
            )
            if row["Name"] == "Aggregated":
                total = entry
            else:
                entries.append(entry)
    return entries, total


def knees(prefix: Path, limit_ms: float) -> dict[str, float | None]:
    """Per model (and "Aggregated"): the highest req/s seen before its current p99 first crossed the limit.

    Uses `<prefix>_stats_history.csv` written with --csv-full-history: one row per second and entry,
    with req/s and p99 over Locust's 10 s window. A model's rate is the sum over its signatures and
    transports at each second. None when the first measurement was already over the limit.
    """
    path = Path(f"{prefix}_stats_history.csv")
    if not path.is_file():
        return {}
    rates: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    worst: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            p99 = _number(row["99%"])
            if p99 is None:
                continue
            model = "Aggregated" if row["Name"] == "Aggregated" else row["Name"].split(":")[0]
            second = int(row["Timestamp"])
            rates[model][second] += _number(row["Requests/s"]) or 0.0
            worst[model][second] = max(worst[model][second], p99)
    result: dict[str, float | None] = {}
    for model, by_second in rates.items():
        best: float | None = None
        for second in sorted(by_second):
            if worst[model][second] > limit_ms:
                break
            if by_second[second] > 0:  # seconds before the first answer say nothing
                best = max(best or 0.0, by_second[second])
        result[model] = best
    return result


# -- the run -------------------------------------------------------------------------------------


def locust_command(
    args: argparse.Namespace, target: str, rest_url: str, prefix: Path, data_dir: Path
) -> list[str]:
    spawn_rate = args.spawn_rate or float(args.users)
    return [
        sys.executable, "-m", "locust",
        "-f", LOCUSTFILES,
        "--headless", "--only-summary",
        "--host", rest_url,
        "--grpc-target", target,
        "--users", str(args.users),
        "--spawn-rate", f"{spawn_rate:g}",
        "--run-time", f"{args.duration}s",
        "--stop-timeout", "5",
        "--csv", str(prefix), "--csv-full-history",
        "--html", str(prefix.parent / "report.html"),
        "--shape", args.shape,
        "--p99-ms", f"{args.p99_ms:g}",
        "--step-users", str(args.step_users),
        "--step-seconds", f"{args.step_seconds:g}",
        "--models", args.models,
        "--data-dir", str(data_dir),
        "--think-ms", f"{args.think_ms:g}",
        "--max-requests", str(args.max_requests),
        "--loglevel", "INFO",
        *USER_CLASSES[args.transport],
    ]  # fmt: skip


# Lines of Locust's log shown as the run goes (all of it stays in locust.log): the shapes' progress
# and step lines, why the run stops, and errors.
_SHOWN = re.compile(r"/(INFO|WARNING|ERROR)/loadtests[.\w]*: (progress|step \d|p99 .* crossed|stopping|request budget|nothing to send|cannot)|/ERROR/")
_STOPPING = re.compile(r"loadtests[.\w]*: (stopping after \d+ s: (?P<reason>.*)|(?P<budget>request budget of \d+ reached))")


def run_locust(command: list[str], env: dict[str, str], log_path: Path, timeout: float) -> tuple[int, str | None]:
    """Run Locust with its output in `log_path`, echoing progress lines; (exit status, why it stopped).

    Exit status -1: killed after `timeout` seconds.
    """
    reason: str | None = None
    with log_path.open("w") as log, subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as locust:
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            locust.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            assert locust.stdout is not None
            for line in locust.stdout:
                log.write(line)
                if _SHOWN.search(line):
                    print("  " + line.split(": ", 1)[-1].rstrip(), flush=True)
                stopping = _STOPPING.search(line)
                if stopping:
                    reason = stopping.group("reason") or stopping.group("budget")
            returncode = locust.wait()
        finally:
            timer.cancel()
    if killed.is_set():
        return -1, f"killed: Locust did not stop within {timeout:g} s"
    return returncode, reason


def check_plan(target: str, models: str, data_dir: Path) -> None:
    """Fail before the run when the server is unreachable or nothing could be sent."""
    samples = load_samples(data_dir, limit=64)
    try:
        with GrpcClient(target, timeout=10) as client:
            calls, notes = build_plan(client, [m.strip() for m in models.split(",") if m.strip()], samples)
    except ClientError as exc:
        raise RunError(f"cannot reach the server at {target}: {exc}") from exc
    for note in notes:
        print(f"  note: {note}")
    if not calls:
        missing = f" (missing samples: {', '.join(samples.missing)})" if samples.missing else ""
        raise RunError(
            f"nothing to send: none of {models} is served with a signature that has samples{missing}"
        )
    print("  workload: " + ", ".join(f"{c.name} x{c.weight}" for c in calls))


def summarize(
    args: argparse.Namespace,
    entries: list[EntryStats],
    total: EntryStats | None,
    knee: dict[str, float | None],
) -> list[str]:
    """Print the summary; returns the problems that make the run fail."""
    problems = []
    width = max([len(e.name) for e in entries] + [10])

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f}"

    print(
        f"\n{'type':<5} {'model:signature':<{width}} {'requests':>9} {'failures':>9} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}"
    )
    for entry in [*entries, *([total] if total else [])]:
        print(
            f"{entry.type:<5} {entry.name:<{width}} {entry.requests:>9} {entry.failures:>9} "
            f"{entry.rps:>8.1f} {fmt(entry.p50_ms):>7} {fmt(entry.p99_ms):>7}"
        )
        if entry is total:
            continue
        if entry.failures:
            problems.append(
                f"{entry.type} {entry.name}: {entry.failures} of {entry.requests} requests failed"
            )
        if args.shape != "step" and entry.p99_ms is not None and entry.p99_ms > args.p99_ms:
            problems.append(
                f"{entry.type} {entry.name}: p99 {entry.p99_ms:.0f} ms is over the {args.p99_ms:g} ms limit"
            )
    if args.shape == "step":
        print(f"\nknee (highest req/s before the 10 s p99 crossed {args.p99_ms:g} ms):")
        for model in sorted(knee, key=lambda m: (m == "Aggregated", m)):
            value = knee[model]
            print(
                f"  {model:<{width}} "
                + (f"{value:.1f} req/s" if value is not None else "over the limit from the start")
            )
            if value is None and model != "Aggregated":
                # Ramping is how the knee is found, so crossing the limit later is expected; a
                # model over the limit at the lightest load misses its latency target outright.
                problems.append(f"{model}: p99 over the {args.p99_ms:g} ms limit from the first step")
    if total is None or total.requests == 0:
        problems.append("no request was made")
    return problems


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    data_dir = (args.data_dir or default_data_dir(REPO_ROOT)).resolve()
    server: LocalServer | None = None
    try:
        if args.start_server:
            server = LocalServer(model_folders(args.models_dir), out, shlex.split(args.server_args))
            print(f"starting the server on 127.0.0.1 ({out / 'server.log'})", flush=True)
            server.start()
            target, rest_url = f"127.0.0.1:{server.grpc_port}", f"http://127.0.0.1:{server.rest_port}"
        else:
            target = args.host
            rest_url = args.rest_url or f"http://{target.rsplit(':', 1)[0]}:8501"
        require_loopback(target)
        require_loopback(rest_url)
        print(
            f"load test: {args.shape}, {args.users} users, {args.duration} s, gRPC {target}, REST {rest_url}",
            flush=True,
        )
        check_plan(target, args.models, data_dir)

        prefix = out / "locust"
        for stale in out.glob("locust_*.csv"):
            stale.unlink()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        }
        returncode, stop_reason = run_locust(
            locust_command(args, target, rest_url, prefix, data_dir), env, out / "locust.log", args.duration + GRACE_S
        )
        unsaid = f"Locust ended without saying why (see {out / 'locust.log'})"
        print(f"stopped: {stop_reason or unsaid}", flush=True)
        entries, total = read_stats(prefix)
        knee = knees(prefix, args.p99_ms) if args.shape == "step" else {}
        problems = summarize(args, entries, total, knee)
        if returncode == -1:
            problems.append(f"Locust did not stop within {args.duration + GRACE_S} s")
        elif returncode != 0 and not problems:
            problems.append(f"Locust exited with status {returncode}; see {out / 'locust.log'}")
        summary = {
            "shape": args.shape, "users": args.users, "duration_s": args.duration, "p99_limit_ms": args.p99_ms,
            "entries": [asdict(e) for e in entries], "total": asdict(total) if total else None,
            "knee_rps": knee, "problems": problems,
        }  # fmt: skip
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"\nreports: {out}/report.html, {prefix}_stats.csv, {out}/summary.json")
        for problem in problems:
            print(f"FAIL: {problem}", file=sys.stderr)
        return 1 if problems else 0
    finally:
        if server is not None:
            server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except RunError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("loadtest: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
