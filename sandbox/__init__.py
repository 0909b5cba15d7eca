"""Simulators of PLU's external systems, used by the demo, the tests and the benchmarks."""
