"""The pure domain: the Lead aggregate, its features and how a score is made.

Nothing here does I/O. The event store, Kafka and the ONNX runtime reach the
domain through the types defined here (the scorer is a port, see scoring.py).
"""
