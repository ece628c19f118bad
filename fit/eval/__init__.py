"""Sample quality of FiT models trained on the procedural shapes: an independent shape classifier, class accuracy,
Fréchet distance on its features, and the size x RoPE-method table of ``fit-eval``."""
