"""fastvar-validate: goldens from the PyTorch reference, per-graph comparison with Polygraphy, end-to-end parity."""
