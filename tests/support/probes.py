"""For tests that run a Faust probe in a subprocess and follow Faust's own code.

``jsonl``: the lines a probe appended to a file (none if it wrote nothing yet).
``source_sha256``: the hash that pins a library function our code copies or follows, so a
new version of the library fails the test until the copy is re-read.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path
from typing import Any


def jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def source_sha256(obj: Any) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()
