"""Data: the item schema, audio decoding, the espeak binding, the synthetic corpus and real SER dataset loaders."""
