"""Benchmarks (`make bench`): every figure beside a peer measured in the same run."""
