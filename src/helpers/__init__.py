"""Tested code behind the ESN companion book: Log -> Identify -> Intervene on audio-language models.

Notebooks stay thin and call into these modules; every threshold is a named parameter here.
"""

__version__ = "0.1.0"
