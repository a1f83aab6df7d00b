"""Shared machinery: gate modules per family, the tracer, neuron sets, the Subject protocol, run I/O, sharding."""
