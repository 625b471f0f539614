"""infra/container/Dockerfile read as Docker would (no Docker here): pinned bases, the
wheel built and installed (not editable), a non-root user, `leadscore` as entrypoint; and
the compose file and terraform's task definitions use it that way."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass

import pytest
import yaml

from adapters.settings import ROOT

DOCKERFILE = ROOT / "infra" / "container" / "Dockerfile"
COMPOSE = ROOT / "infra" / "compose" / "docker-compose.yml"
SERVICES_TF = ROOT / "infra" / "terraform" / "modules" / "services" / "main.tf"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def parse(text: str) -> list[Instruction]:
    """Instructions in order, continuation lines joined, comments dropped; each with the
    index of the build stage (FROM) it belongs to."""
    joined: list[str] = []
    buffer = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        joined.append(buffer + line)
        buffer = ""
    assert not buffer, "a continued line never ends"
    out: list[Instruction] = []
    stage = -1
    for line in joined:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, args.strip(), stage))
    return out


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text())


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def test_every_base_image_is_pinned(instructions: list[Instruction]) -> None:
    bases = [i.args.split()[0] for i in instructions if i.keyword == "FROM"]
    assert len(bases) == 2, bases
    for base in bases:
        pinned_digest = re.fullmatch(r"[\w./-]+@sha256:[0-9a-f]{64}", base)
        pinned_version = re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", base)
        assert pinned_digest or pinned_version, f"{base} is not pinned to a version or digest"


def test_the_wheel_is_built_and_installed_not_editable(instructions: list[Instruction]) -> None:
    runs = [i for i in instructions if i.keyword == "RUN"]
    builds = [r for r in runs if re.search(r"\bpip wheel\b.*-w (\S+) \.", r.args)]
    assert builds and builds[0].stage == 0, "no `pip wheel` of the source in the build stage"
    final = final_stage(instructions)
    copies = [i for i in final if i.keyword == "COPY" and "--from=" in i.args]
    assert copies, "the final stage does not take the build stage's wheel"
    installs = [
        i
        for i in final
        if i.keyword == "RUN" and re.search(r"pip install .*leadscore-\*\.whl", i.args)
    ]
    assert installs, "the final stage does not pip install the wheel"
    for i in final:
        assert not re.search(r"pip install[^&]*\s-e\b", i.args), f"editable install: {i.args}"
    # The source is not in the final image: only the wheel's install is.
    assert not [i for i in final if i.keyword in ("COPY", "ADD") and "--from=" not in i.args]


def test_it_runs_as_a_user_other_than_root(instructions: list[Instruction]) -> None:
    users = [i.args for i in final_stage(instructions) if i.keyword == "USER"]
    assert users, "no USER: the engine would run as root"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]
    created = [
        i.args for i in final_stage(instructions) if i.keyword == "RUN" and "useradd" in i.args
    ]
    assert any(users[-1] in shlex.split(c) for c in created), "USER names a user never created"


def test_the_entrypoint_is_leadscore(instructions: list[Instruction]) -> None:
    final = final_stage(instructions)
    (entrypoint,) = [i for i in final if i.keyword == "ENTRYPOINT"]
    # Exec form, so SIGTERM reaches the engine and not a shell.
    assert exec_form(entrypoint.args) == ["leadscore"]
    (cmd,) = [i for i in final if i.keyword == "CMD"]
    assert exec_form(cmd.args) == ["worker"]


def test_the_build_context_holds_the_data_the_wheel_bundles(
    instructions: list[Instruction],
) -> None:
    copied = " ".join(i.args for i in instructions if i.keyword == "COPY" and i.stage == 0)
    for needed in ("setup.py", "schemas/avro/", "models/onnx/", "config/"):
        assert needed in copied, f"the build stage does not copy {needed}"
    # Every package of the wheel (pyproject.toml) is in the build context.
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for top in {p.split(".")[0] for p in packages["packages"]}:
        assert f"{top}/" in copied, f"the build stage does not copy {top}/"
    for path in ("setup.py", "schemas/avro", "models/onnx", "config"):
        assert (ROOT / path).exists(), path


def test_compose_builds_this_image_and_gives_subcommands() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    engines = {
        name: svc
        for name, svc in compose["services"].items()
        if isinstance(svc.get("build"), dict) and svc["build"].get("context") == "../.."
    }
    assert {"engine", "registry", "api"} <= set(engines), sorted(engines)
    for name, svc in engines.items():
        context = (COMPOSE.parent / svc["build"]["context"]).resolve()
        assert (context / svc["build"]["dockerfile"]).resolve() == DOCKERFILE.resolve(), name
        assert svc["command"][0] != "leadscore", f"{name}: the entrypoint is leadscore already"


def test_terraform_gives_the_tasks_subcommands_of_the_entrypoint() -> None:
    commands = re.findall(r"command\s*=\s*(\[[^\]]*\])", SERVICES_TF.read_text())
    service_commands = [json.loads(c) for c in commands if '"CMD"' not in c]
    assert len(service_commands) == 5, service_commands
    for cmd in service_commands:
        assert cmd[0] in ("worker", "relay", "projections", "api", "registry"), cmd


def test_the_parser_reads_what_it_checks() -> None:
    """The checks above bite on a Dockerfile that breaks them."""
    bad = parse(
        "FROM python:3.11-slim\nCOPY . /app\nRUN pip install -e /app\n"
        'ENTRYPOINT leadscore\nCMD ["worker"]\n'
    )
    with pytest.raises(AssertionError):
        test_every_base_image_is_pinned(bad)
    with pytest.raises(AssertionError):
        test_the_wheel_is_built_and_installed_not_editable(bad)
    with pytest.raises(AssertionError):
        test_it_runs_as_a_user_other_than_root(bad)
    with pytest.raises((AssertionError, json.JSONDecodeError)):
        test_the_entrypoint_is_leadscore(bad)
