"""Intervene: edit conditions, the batched runner, and the deactivation / steering / label-free experiments."""
