"""Identify: the neuron selectors (LAP, LAPE, MAD, CAS, AAPE, random) and resampling of their sets."""
