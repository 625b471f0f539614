"""Lead scoring engine: composition root, settings, CLI and local services."""
