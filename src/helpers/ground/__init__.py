"""Ground: item pairing, activation patching, calibrated coefficients, conflict and dissociation analysis."""
