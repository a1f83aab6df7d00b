"""Metrics: intervention effects (recall, UAR, SE/CE/gap, flips, corrections) and bootstrap intervals."""
