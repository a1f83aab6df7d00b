"""Chapter 07: sparse autoencoders on the gate activations, compared with the selected neurons."""
