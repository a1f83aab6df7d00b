"""Subjects: the model organism (model, training, checks) and the real-model adapters behind load_subject."""
