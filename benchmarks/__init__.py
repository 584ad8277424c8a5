"""Measurement programs: throughput, latency, memory, accuracy. Run from the repository root as
`python -m benchmarks.NAME` (docs/development.md)."""
