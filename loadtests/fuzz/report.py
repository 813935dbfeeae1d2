"""What a campaign prints: counts, time, seed, RSS, outcomes by status, and each distinct failure with
the command that replays one case of it."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from loadtests.fuzz.campaign import Campaign, CaseResult
from loadtests.fuzz.cases import GRPC, REST, GrpcCase, case_id

EXAMPLES_SHOWN = 3


def replay_command(campaign: Campaign, ids: list[str]) -> str:
    flags = "" if campaign.config.openapi else " --no-openapi"  # the REST families depend on it
    flags += "" if campaign.config.batching else " --no-batching"
    return f"python -m loadtests.fuzz --seed {campaign.config.seed}{flags} --replay {' '.join(ids)}"


def _transport(result: CaseResult) -> str:
    return GRPC if isinstance(result.case, GrpcCase) else REST


def _normalized(message: str) -> str:
    """A message with its variable parts blurred, so one bug's answers group together."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", message)
    text = re.sub(r"\d+", "N", text)
    return text[:100]


@dataclass
class FailureGroup:
    transport: str
    failure: str
    status: str
    message: str
    cause: str  # the exception the server logged, when it logged one
    results: list[CaseResult]

    @property
    def families(self) -> list[str]:
        return sorted({r.case.family for r in self.results})


def distinct_failures(campaign: Campaign) -> list[FailureGroup]:
    """Failures grouped by what went wrong: transport, verdict, status, and the server's exception
    (or the answer's message, blurred), so one bug reached from several families is one group."""
    groups: dict[tuple[str, ...], list[CaseResult]] = defaultdict(list)
    for result in campaign.failures:
        assert result.failure is not None
        why = _normalized(result.cause) if result.cause else _normalized(result.outcome.message)
        groups[(_transport(result), result.failure, result.outcome.status, why)].append(result)
    found = [
        FailureGroup(key[0], key[1], key[2], results[0].outcome.message, results[0].cause, results)
        for key, results in groups.items()
    ]
    return sorted(found, key=lambda g: (-len(g.results), g.transport, g.failure))


def server_exceptions(log: str) -> list[tuple[int, str]]:
    """Distinct tracebacks in the server log: (count, "<logger line> -> <exception line>")."""
    found: Counter[str] = Counter()
    lines = log.splitlines()
    for index, line in enumerate(lines):
        if not line.startswith("Traceback (most recent call last):"):
            continue
        context = lines[index - 1] if index else ""
        context = re.sub(r"^\S+ \S+ ", "", context)  # drop the timestamp
        end = index + 1
        while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end].strip()):
            end += 1
        exception = lines[end] if end < len(lines) else "?"
        if context.startswith("Traceback") or not context.strip() or "During handling" in context:
            continue  # a chained traceback: counted with its first block
        found[f"{context[:110]} -> {exception[:160]}"] += 1
    return sorted(((n, text) for text, n in found.items()), reverse=True)


def outcome_table(campaign: Campaign) -> str:
    counts: Counter[tuple[str, str]] = Counter()
    failures: Counter[tuple[str, str]] = Counter()
    slowest: dict[tuple[str, str], float] = {}
    for result in campaign.results:
        key = (_transport(result), result.outcome.status)
        counts[key] += 1
        failures[key] += bool(result.failure)
        slowest[key] = max(slowest.get(key, 0.0), result.outcome.seconds)
    lines = [f"  {'transport':<9} {'status':<22} {'cases':>7} {'failures':>8} {'slowest':>9}"]
    for key in sorted(counts):
        lines.append(f"  {key[0]:<9} {key[1]:<22} {counts[key]:>7} {failures[key]:>8} {slowest[key]:>8.2f}s")
    return "\n".join(lines)


def family_table(campaign: Campaign) -> str:
    counts: Counter[tuple[str, str]] = Counter()
    failures: Counter[tuple[str, str]] = Counter()
    for result in campaign.results:
        key = (_transport(result), result.case.family)
        counts[key] += 1
        failures[key] += bool(result.failure)
    lines = [f"  {'transport':<9} {'family':<22} {'cases':>7} {'failures':>8}"]
    for key in sorted(counts):
        lines.append(f"  {key[0]:<9} {key[1]:<22} {counts[key]:>7} {failures[key]:>8}")
    return "\n".join(lines)


def render(campaign: Campaign, verbose: bool = False) -> str:
    config = campaign.config
    by_transport = Counter(_transport(r) for r in campaign.results)
    out = [
        f"fuzz campaign: seed {config.seed}; gRPC {by_transport[GRPC]}/{config.grpc_cases} cases, "
        f"REST {by_transport[REST]}/{config.rest_cases} cases; {campaign.seconds:.1f} s of cases "
        f"(stopped by {campaign.stopped_by}; max {config.max_seconds:.0f} s), {campaign.startup_seconds:.1f} s to "
        f"start and warm up, {campaign.stop_seconds:.1f} s to stop; concurrency {config.concurrency}, "
        f"per-case timeout {config.case_timeout:.0f} s",
        f"server RSS: before {campaign.rss_before_kb / 1024:.1f} MB, after {campaign.rss_after_kb / 1024:.1f} MB "
        f"({campaign.rss_growth_mb:+.1f} MB; bound {config.max_rss_growth_mb:.0f} MB), "
        f"peak {campaign.rss_peak_kb / 1024:.1f} MB; restarts {campaign.restarts}; exit status {campaign.exit_status}",
    ]
    if campaign.openapi_note:
        out.append(campaign.openapi_note)
    out += ["outcomes by status:", outcome_table(campaign), "cases by family:", family_table(campaign)]
    groups = distinct_failures(campaign)
    out.append(f"failures: {len(campaign.failures)} ({len(groups)} distinct)")
    for number, group in enumerate(groups, 1):
        ids = [r.id for r in group.results]
        first = group.results[0]
        out.append(
            f"  [{number}] {group.transport}: {group.failure}; x{len(ids)} in {', '.join(group.families)} "
            f"(e.g. {', '.join(ids[:EXAMPLES_SHOWN])})"
        )
        out.append(f"      answer: {group.status} {group.message[:200]!r}")
        if group.cause:
            out.append(f"      server logged: {group.cause}")
        out.append(f"      case {first.id}: {first.case.description[:400]}")
        out.append(f"      replay: {replay_command(campaign, [first.id])}")
        if first.log.strip() and (verbose or number <= 10):
            tail = [line for line in first.log.strip().splitlines() if line.strip()][-3:]
            out += [f"      server log: {line[:200]}" for line in tail]
    if campaign.rss_failure:
        out.append(f"FAILURE: {campaign.rss_failure}")
    if campaign.conformance:
        why_counts = Counter(_normalized(why) for _, why in campaign.conformance)
        out.append(
            f"answers that break openapi.json: {len(campaign.conformance)} ({len(why_counts)} distinct)"
        )
        for why, count in why_counts.most_common(10):
            example = next(i for i, w in campaign.conformance if _normalized(w) == why)
            out.append(f"  x{count} {why} (e.g. {example}; replay: {replay_command(campaign, [example])})")
    if campaign.harness_errors:
        out.append(f"FUZZER ERRORS (a bug in loadtests/fuzz, not the server): {len(campaign.harness_errors)}")
        out += [f"  {case}: {why[:200]}" for case, why in campaign.harness_errors[:10]]
    exceptions = server_exceptions(campaign.server_log)
    if exceptions:
        out.append(f"server log: {sum(n for n, _ in exceptions)} tracebacks ({len(exceptions)} distinct)")
        out += [f"  x{count} {text}" for count, text in exceptions[:15]]
    out.append("result: " + ("OK, no failures" if campaign.ok else "FAILED"))
    return "\n".join(out)


def render_replay(campaign: Campaign) -> str:
    out = []
    for result in campaign.results:
        case = result.case
        out.append(f"case {result.id} ({case.family}, expect {case.expect.value}): {case.description}")
        if isinstance(case, GrpcCase):
            out.append(f"  method {case.method}; payload {len(case.payload)} bytes: {case.payload[:600]!r}")
        else:
            from loadtests.fuzz.rest_cases import request_bytes

            data = request_bytes(case, "127.0.0.1:PORT")
            out.append(f"  request {len(data)} bytes: {data[:1200]!r}")
        out.append(
            f"  answer: {result.outcome.status} {result.outcome.message[:500]!r} ({result.outcome.seconds:.3f} s)"
        )
        out.append(f"  verdict: {'FAILURE: ' + result.failure if result.failure else 'ok'}")
        log = [line for line in result.log.splitlines() if line.strip() and " INFO " not in line]
        out += [f"  server log: {line[:300]}" for line in log[-25:]]
    for case_name, why in campaign.conformance:
        out.append(f"  {case_name} breaks openapi.json: {why}")
    out.append(
        f"server RSS: before {campaign.rss_before_kb / 1024:.1f} MB, after {campaign.rss_after_kb / 1024:.1f} MB, "
        f"peak {campaign.rss_peak_kb / 1024:.1f} MB; exit status {campaign.exit_status}"
    )
    return "\n".join(out)


def to_json(campaign: Campaign) -> dict[str, Any]:
    """The campaign as data (`--out DIR` writes it as report.json)."""
    config = campaign.config
    return {
        "seed": config.seed,
        "grpc_cases": config.grpc_cases,
        "rest_cases": config.rest_cases,
        "max_seconds": config.max_seconds,
        "seconds": round(campaign.seconds, 2),
        "startup_seconds": round(campaign.startup_seconds, 2),
        "stop_seconds": round(campaign.stop_seconds, 2),
        "stopped_by": campaign.stopped_by,
        "sent": Counter(_transport(r) for r in campaign.results),
        "rss_kb": {
            "before": campaign.rss_before_kb,
            "after": campaign.rss_after_kb,
            "peak": campaign.rss_peak_kb,
        },
        "restarts": campaign.restarts,
        "exit_status": campaign.exit_status,
        "outcomes": Counter(f"{_transport(r)} {r.outcome.status}" for r in campaign.results),
        "failures": [
            {
                "failure": group.failure,
                "transport": group.transport,
                "families": group.families,
                "cause": group.cause,
                "status": group.status,
                "message": group.message,
                "count": len(group.results),
                "cases": [r.id for r in group.results],
                "description": group.results[0].case.description,
                "replay": replay_command(campaign, [group.results[0].id]),
            }
            for group in distinct_failures(campaign)
        ],
        "conformance": [{"case": case, "why": why} for case, why in campaign.conformance],
        "harness_errors": [{"case": case, "why": why} for case, why in campaign.harness_errors],
        "server_exceptions": [
            {"count": n, "what": text} for n, text in server_exceptions(campaign.server_log)
        ],
        "ok": campaign.ok,
        "case_ids": sorted({case_id(r.case) for r in campaign.failures}),
    }
