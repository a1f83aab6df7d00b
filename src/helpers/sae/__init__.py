"""Chapter 07: sparse autoencoders on the gate activations, compared with the selected neurons: the SAE and its
training (:mod:`~helpers.sae.training`), its data (:mod:`~helpers.sae.collect`), SAELens-layout storage
(:mod:`~helpers.sae.saelens_io`) and features as units (:mod:`~helpers.sae.features`)."""
