"""`python -m loadtests.fuzz` (`make fuzz`): a bounded, seeded fuzz campaign against the real server.

    python -m loadtests.fuzz --seed 7 --grpc-cases 10000 --rest-cases 10000 --max-seconds 900
    python -m loadtests.fuzz --seed 7 --replay grpc:123 rest:45     # one case at a time, with its log
    python -m loadtests.fuzz --seed 7 --dry-run --grpc-cases 20      # print cases; no server

Exits 1 on any failure (a 5xx, gRPC INTERNAL/UNKNOWN, a hang, the process dying, RSS growth over
the bound, an answer that breaks openapi.json), 0 otherwise, 2 on a usage or launch error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from loadtests.fuzz import report
from loadtests.fuzz.campaign import CampaignConfig, interleaved, parse_case_id, replay, run_campaign
from loadtests.fuzz.cases import GRPC
from loadtests.fuzz.grpc_cases import grpc_case
from loadtests.fuzz.rest_cases import rest_case
from serving.launcher import LaunchError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests.fuzz", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--seed", type=int, default=0, help="the campaign's seed: the same seed sends the same cases")
    add("--grpc-cases", type=int, default=1000, help="gRPC cases to send (at most)")
    add("--rest-cases", type=int, default=1000, help="REST cases to send (at most)")
    add("--max-seconds", type=float, default=300, help="stop sending after this long, whatever the counts")
    add("--case-timeout", type=float, default=10, help="seconds one case may take before it counts as a hang")
    add(
        "--concurrency",
        type=int,
        default=2,
        help="cases in flight at once (1: one by one, exact per-case logs)",
    )
    add("--max-rss-growth-mb", type=float, default=256, help="fail if the server's RSS grows more than this")
    add(
        "--no-openapi",
        dest="openapi",
        action="store_false",
        help="no schemathesis cases (changes REST cases)",
    )
    add("--no-batching", dest="batching", action="store_false", help="serve without --enable_batching")
    add(
        "--replay",
        nargs="+",
        metavar="CASE",
        help="run only these cases (grpc:N, rest:N) and show each in full",
    )
    add("--dry-run", action="store_true", help="print the cases' descriptions; start no server")
    add("--out", type=Path, help="write report.json and server.log here")
    add("--work-dir", type=Path, help="keep the model repository and server logs here (default: a temp dir)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = CampaignConfig(
        seed=args.seed,
        grpc_cases=args.grpc_cases,
        rest_cases=args.rest_cases,
        max_seconds=args.max_seconds,
        case_timeout=args.case_timeout,
        concurrency=args.concurrency,
        max_rss_growth_mb=args.max_rss_growth_mb,
        openapi=args.openapi,
        batching=args.batching,
        work_dir=args.work_dir,
    )
    if args.dry_run:
        return _dry_run(config, args.replay)
    try:
        if args.replay:
            for text in args.replay:
                parse_case_id(text)
            campaign = replay(config, args.replay)
            print(report.render_replay(campaign))
        else:
            campaign = run_campaign(
                config, progress=lambda line: print(f"... {line}", file=sys.stderr, flush=True)
            )
            print(report.render(campaign))
    except (LaunchError, ValueError) as exc:
        print(f"fuzz: {exc}", file=sys.stderr)
        return 2
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(json.dumps(report.to_json(campaign), indent=2) + "\n")
        (args.out / "server.log").write_text(campaign.server_log)
        print(f"wrote {args.out / 'report.json'} and {args.out / 'server.log'}")
    return 0 if campaign.ok else 1


def _dry_run(config: CampaignConfig, ids: Sequence[str] | None) -> int:
    openapi = None
    if config.openapi:
        from loadtests.fuzz.openapi_cases import OpenApiCases

        openapi = OpenApiCases()
    jobs = (
        [parse_case_id(text) for text in ids]
        if ids
        else list(interleaved(config.grpc_cases, config.rest_cases))
    )
    for transport, index in jobs:
        case = grpc_case(config.seed, index) if transport == GRPC else rest_case(config.seed, index, openapi)
        print(f"{transport}:{index} [{case.family}, expect {case.expect.value}] {case.description[:300]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
