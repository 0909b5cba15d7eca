"""Pure payload functions referenced from flows as `module.function` (no I/O here, ever)."""
