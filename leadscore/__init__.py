"""Lead scoring engine: the composition root — the `leadscore` CLI, the demo, CSV import and
model training. It wires ``adapters``, ``streams``, ``projections``, ``query_api`` and
``devtools`` together and nothing imports it (.importlinter)."""
