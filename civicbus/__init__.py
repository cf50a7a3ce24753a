"""civicbus: the shared vocabulary of the city event bus.

Config, topology, schemas and serde, policy, the embedded broker, metrics and the CLI live
here. This package never imports producers/, processors/ or consumers/: they depend on it.
"""
