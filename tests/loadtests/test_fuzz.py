"""The fuzz campaign (`loadtests.fuzz`): a short campaign against the real server, and its pure pieces
(generators that are functions of seed and index, the judge, the HTTP reader, the OpenAPI document)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.fuzz import report
from loadtests.fuzz.campaign import (
    Campaign,
    CampaignConfig,
    FuzzServer,
    Runner,
    interleaved,
    parse_case_id,
    parse_http_answer,
    run_campaign,
)
from loadtests.fuzz.cases import CONNECTION, TIMEOUT, Expect, GrpcCase, Outcome, RestCase, judge
from loadtests.fuzz.grpc_cases import FAMILIES as GRPC_FAMILIES
from loadtests.fuzz.grpc_cases import grpc_case, nested_variant_request
from loadtests.fuzz.models import MODELS
from loadtests.fuzz.openapi_cases import BLOCK, Conformance, OpenApiCases, load_document
from loadtests.fuzz.rest_cases import FAMILIES as REST_FAMILIES
from loadtests.fuzz.rest_cases import Literal, dumps, request_bytes, rest_case
from serving.launcher import REPO_ROOT
from serving.proto import apis_pb2
from serving.protocol.rest import app as rest_app

SEED = 20261201


@pytest.mark.slow
def test_short_campaign_finds_no_failure(tmp_path: Path) -> None:
    """~20 s: the same code as `make fuzz`, bounded at 12 s of cases; every case must be answered well."""
    config = CampaignConfig(
        seed=SEED, grpc_cases=1500, rest_cases=1500, max_seconds=12, concurrency=2, work_dir=tmp_path
    )
    campaign = run_campaign(config)
    text = report.render(campaign)
    print(text)
    assert len(campaign.results) > 200, text
    assert {r.case.family for r in campaign.results if isinstance(r.case, GrpcCase)} >= {
        "valid.predict",
        "raw",
    }
    assert campaign.rss_before_kb > 0 and campaign.rss_after_kb > 0, text
    assert campaign.exit_status == 0, text
    assert campaign.ok, text


@pytest.mark.slow
def test_a_dead_server_is_a_failure_and_is_started_again(tmp_path: Path) -> None:
    """The process dying is caught after the case that saw it; the campaign goes on with a new one."""
    config = CampaignConfig(seed=SEED, grpc_cases=1, rest_cases=1, max_seconds=5, openapi=False)
    campaign = Campaign(config)
    server = FuzzServer(tmp_path, batching=False)
    server.start()
    runner = Runner(config, server, campaign)
    try:
        valid = next(c for c in (grpc_case(SEED, i) for i in range(100)) if c.expect is Expect.OK)
        assert runner.run_case(valid, capture_log=False).failure is None
        server.current.process.kill()
        server.current.process.wait()
        dead = runner.run_case(valid, capture_log=False)
        assert dead.failure is not None and "died" in dead.failure
        assert campaign.restarts == 1 and server.alive()
        assert runner.run_case(valid, capture_log=False).failure is None
    finally:
        runner.close()
        server.stop()


def test_rss_growth_over_the_bound_fails_the_campaign() -> None:
    campaign = Campaign(
        CampaignConfig(seed=0, grpc_cases=0, rest_cases=0, max_seconds=1, max_rss_growth_mb=100)
    )
    campaign.rss_before_kb, campaign.rss_after_kb = 120 * 1024, 200 * 1024
    assert campaign.rss_failure is None and campaign.ok
    campaign.rss_after_kb = 240 * 1024
    assert campaign.rss_failure is not None and "120.0 MB" in campaign.rss_failure and not campaign.ok


def test_grpc_cases_are_a_function_of_seed_and_index() -> None:
    alone = grpc_case(SEED, 149)  # made before any other: a case needs none of the cases before it
    cases = [grpc_case(SEED, index) for index in range(150)]
    assert cases == [grpc_case(SEED, index) for index in range(150)]
    assert cases[149] == alone
    assert [c.payload for c in cases] != [grpc_case(SEED + 1, index).payload for index in range(150)]
    assert all(c.description and c.method.startswith("/") for c in cases)
    assert {c.family for c in cases} >= {name for name, weight, _ in GRPC_FAMILIES if weight >= 6}


def test_rest_cases_are_a_function_of_seed_and_index() -> None:
    alone = rest_case(SEED, 119)
    cases = [rest_case(SEED, index) for index in range(120)]
    assert cases == [rest_case(SEED, index) for index in range(120)]
    assert cases[119] == alone
    assert [request_bytes(c, "h") for c in cases] != [
        request_bytes(rest_case(SEED + 1, i), "h") for i in range(120)
    ]
    assert {c.family for c in cases} >= {name for name, weight, _ in REST_FAMILIES if weight >= 5}


def test_openapi_cases_are_a_function_of_seed_and_index() -> None:
    """Schemathesis draws a block of cases per seed and block number: drawn twice, it draws the same."""
    indices = [index for index in range(BLOCK) if rest_case(SEED, index, OpenApiCases()).family == "openapi"][
        :3
    ]
    first, second = OpenApiCases(), OpenApiCases()
    assert indices
    for index in indices:
        a, b = first(SEED, index), second(SEED, index)
        assert a == b
        assert a.description.startswith("openapi ") and a.target.startswith("/")
        assert b"127.0.0.1:1" not in request_bytes(a, "h")  # the placeholder base URL never leaks


def test_valid_cases_are_valid_requests() -> None:
    for index in range(300):
        case = grpc_case(SEED, index)
        if case.family == "valid.predict":
            # Valid by the signature; the window model's graph also needs an even length.
            assert case.expect is Expect.OK or "the graph needs" in case.description
            request = apis_pb2.PredictRequest.FromString(case.payload)
            assert request.model_spec.name in MODELS


def test_judge() -> None:
    grpc = GrpcCase(0, "raw", "d", "/m", b"", Expect.ANY)
    valid = GrpcCase(0, "valid.predict", "d", "/m", b"", Expect.OK)
    invalid = GrpcCase(0, "predict.names", "d", "/m", b"", Expect.ERROR)
    assert judge(grpc, Outcome("INVALID_ARGUMENT", "bad", 0.0)) is None
    assert judge(grpc, Outcome("UNIMPLEMENTED", "Method not found!", 0.0)) is None
    assert judge(grpc, Outcome("INTERNAL", "oops", 0.0)) == "gRPC INTERNAL"
    assert judge(grpc, Outcome("UNKNOWN", "oops", 0.0)) == "gRPC UNKNOWN"
    assert judge(grpc, Outcome("NOT_FOUND", " ", 0.0)) == "gRPC NOT_FOUND with an empty message"
    assert judge(grpc, Outcome(TIMEOUT, "", 10.0)) is not None
    assert judge(grpc, Outcome(CONNECTION, "reset", 0.0)) is not None
    assert judge(grpc, Outcome("OK", "", 0.0, body_ok=False)) is not None
    assert judge(valid, Outcome("INVALID_ARGUMENT", "bad", 0.0)) is not None
    assert judge(invalid, Outcome("OK", "", 0.0)) is not None
    rest = RestCase(0, "path", "d", "GET", "/", (), b"", Expect.ANY)
    assert judge(rest, Outcome("HTTP 400", "bad", 0.0)) is None
    assert judge(rest, Outcome("HTTP 400", "<html>", 0.0, body_ok=False)) is not None  # not {"error": ...}
    assert judge(rest, Outcome("HTTP 501", "regress is not supported", 0.0)) is None
    assert judge(rest, Outcome("HTTP 500", "internal server error", 0.0)) == "HTTP 500"
    assert judge(rest, Outcome("HTTP 503", "busy", 0.0)) == "HTTP 503"
    assert judge(rest, Outcome("HTTP 200", "", 0.0, body_ok=False)) is not None
    parser = RestCase(0, "http.raw", "d", "RAW", "/", (), b"", Expect.ERROR, json_error=False)
    assert judge(parser, Outcome("HTTP 400", "Bad status line", 0.0, body_ok=False)) is None


def test_http_answers_are_read_whole() -> None:
    assert parse_http_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab") is None
    answer = parse_http_answer(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}"
    )
    assert answer is not None and (answer.status, answer.body) == (404, b"{}")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert parse_http_answer(chunked).body == b"abcde"  # type: ignore[union-attr]
    assert parse_http_answer(b"HTTP/1.0 400 Bad\r\n\r\nplain", closed=True).body == b"plain"  # type: ignore[union-attr]
    head = parse_http_answer(
        b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 30\r\n\r\n", head_request=True
    )
    assert head is not None and head.status == 405


def test_json_literals_and_raw_bytes() -> None:
    body = dumps({"a": [float("nan"), Literal("1" * 5000), "\ud800", Literal(b'"\xff"')]})
    assert body.startswith(b'{"a": [NaN, 1111') and body.endswith(b'"\\ud800", "\xff"]}')
    assert dumps({"t": "\ud800"}, ascii_only=False) == b'{"t": "\xed\xa0\x80"}'


def test_nested_protobuf_is_deep_but_small() -> None:
    payload = nested_variant_request(10_000)
    assert len(payload) < 200_000
    with pytest.raises(Exception, match=r"MaxDepth|recursion|depth"):
        apis_pb2.PredictRequest.FromString(payload)


def test_case_ids_and_order() -> None:
    assert parse_case_id("grpc:12") == ("grpc", 12)
    with pytest.raises(ValueError):
        parse_case_id("grpc12")
    assert list(interleaved(2, 3)) == [("grpc", 0), ("rest", 0), ("grpc", 1), ("rest", 1), ("rest", 2)]


def test_openapi_document_describes_the_rest_app() -> None:
    """Every route app.py serves is in openapi.json, each refs resolves, and schemathesis loads it."""
    document = load_document()
    assert document["openapi"].startswith("3.")
    expected = {rest_cases_path(prefix, verb) for prefix in ("", "/versions/{version}", "/labels/{label}")
                for verb in ("", "/metadata", ":predict", ":classify", ":regress")}  # fmt: skip
    expected.add("/monitoring/prometheus/metrics")
    assert set(document["paths"]) == expected
    for path in expected - {"/monitoring/prometheus/metrics"}:
        concrete = (
            path.replace("{model_name}", "digits").replace("{version}", "2").replace("{label}", "stable")
        )
        assert rest_app._PATH.match(concrete), path  # the app's own route pattern takes it
    text = json.dumps(document)
    for reference in set(re.findall(r'"\$ref": "#/([^"]+)"', text)):
        node = document
        for part in reference.split("/"):
            node = node[part]
    cases = OpenApiCases(document)
    assert len(cases.operations) == len(expected)
    conformance = Conformance(document)
    operation = conformance.operation("POST", "/v1/models/digits/versions/2:predict")
    assert operation is not None and operation["operationId"] == "predictVersion"
    status = b'{"model_version_status":[{"version":"1","state":"AVAILABLE","status":{"error_code":"OK","error_message":""}}]}'
    assert conformance.check("GET", "/v1/models/digits", 200, status) is None
    assert conformance.check("GET", "/v1/models/digits", 200, b'{"model_version_status": [{"state": 3}]}')
    assert (
        conformance.check("POST", "/v1/models/digits:predict", 200, b'{"predictions": [[0.5, 0.5]]}') is None
    )
    assert conformance.check("GET", "/v1/models/digits", 418, b"{}", statuses=True)


def rest_cases_path(prefix: str, verb: str) -> str:
    return f"/v1/models/{{model_name}}{prefix}{verb}"


def test_dry_run_prints_the_same_cases_twice() -> None:
    command = [sys.executable, "-m", "loadtests.fuzz", "--seed", "5", "--grpc-cases", "30", "--rest-cases", "30",
               "--dry-run", "--no-openapi"]  # fmt: skip
    first = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    second = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert first == second and first.count("\n") == 60
    assert first.startswith("grpc:0 [")
