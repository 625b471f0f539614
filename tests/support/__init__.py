"""Helpers and shared fixtures for the tests, by concern; test modules import from here.

No test module imports another test module (tests/unit/test_layout.py checks it):

- ``pipeline``: encode lead-events, feed them through an engine, read score-events back.
- ``readmodels``: the read models' expected and actual state, and projecting to the head.
- ``worker``: the worker as a real process, its metrics and its committed offsets.
- ``api``: the query API as a real process, its HTTP client and a seeded, running API.
- ``models``: the committed model: copies of it, and v1 loaded as a scorer.
- ``store_contract``: the assertions every LeadStore backend must pass.
- ``wire``: the Confluent wire format without a schema registry.
- ``net``: a free local port.
"""
