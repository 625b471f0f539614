"""The worker's Faust setup: no terminal spinner, so debug records are never made."""

from __future__ import annotations

import logging

import faust

from streams.worker import faust_worker


def test_a_worker_logging_at_warning_leaves_debug_lines_unmade() -> None:
    app = faust.App("probe-logging", broker="kafka://127.0.0.1:1", web_enabled=False)
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        # What the worker does when it starts (mode.Worker.default_on_first_start).
        faust_worker(app, "warning")._setup_logging()
        assert logging.getLogger("aiokafka.consumer.fetcher").getEffectiveLevel() >= logging.WARNING
        assert not logging.getLogger("faust").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
