"""The flow runtime: spec, validation, registry, executor, resilience, embedded NATS."""
