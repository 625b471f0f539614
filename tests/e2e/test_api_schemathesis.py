"""Schemathesis against the live API's own /openapi.json: no 5xx, every answer as documented.

Runs every phase (examples, coverage, fuzzing, stateful) and every check, with a valid
key, against a server seeded like tests/integration/test_api.py.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.settings import Settings
from query_api.app import routes
from query_api.openapi import document
from tests.support.api import ORG_A, Api, live_api

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 25  # per operation and phase: the whole run stays well under a minute

# The cursor is opaque: any string matches its documented pattern, but only cursors the
# server issued decode, so a well-formed forgery is a 422 that the schema cannot express.
# Likewise an instant: any date-time matches, but one in the future or before the lead
# was created is a 422. Only the operations taking a cursor or an instant get 422 added
# to the statuses valid data may get.
CONFIG = """
[[operations]]
include-path-regex = "^/leads(/\\\\{id\\\\}/(scores|as-of|diff))?$|^/leaderboard$"
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "401", "403", "404", "409", "429", "5xx", "422",
]
"""


@pytest.fixture(scope="module")
def live(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    # These tests send hundreds of requests a second from one key and IP: the limits'
    # own tests (tests/integration/test_api_limits.py) run an API with low ones.
    unlimited = dataclasses.replace(services, api_key_rate=0, api_ip_rate=0)
    with live_api(unlimited, tmp_path_factory.mktemp("api-schemathesis")) as running:
        yield running


def test_api_conforms_to_its_openapi_document(live: Api, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    st = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(st),
            "--config-file",
            str(config),
            "--no-color",
            "run",
            f"http://127.0.0.1:{live.port}/openapi.json",
            "--header",
            f"Authorization: Bearer {live.keys[ORG_A]}",
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--generation-database",
            "none",
        ],
        cwd=tmp_path,  # anything schemathesis writes stays in the test's directory
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-30_000:] + result.stderr[-5_000:]
    # Every documented operation but the document itself, which schemathesis leaves out.
    paths = document(routes())["paths"]
    operations = sum(len(item) for path, item in paths.items() if path != "/openapi.json")
    summary = f"Operations:       {operations} selected / {operations} total"
    assert summary in result.stdout, result.stdout[-5_000:]
