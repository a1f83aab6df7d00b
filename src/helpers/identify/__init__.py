"""Identify: the neuron selectors (LAP, LAPE, MAD, CAS, AAPE, random) (:mod:`~helpers.identify.methods`), selection
by name (:mod:`~helpers.identify.selection`), set utilities (:mod:`~helpers.identify.set_ops`) and resampling of
their sets."""
