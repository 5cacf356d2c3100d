"""The Cartesian-tensor potential in PyTorch: no AiiDA import, runs on a bare GPU worker."""
