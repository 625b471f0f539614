"""Kafka side of the engine: wire format, the Faust worker and the score-event relay."""
