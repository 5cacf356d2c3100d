"""AiiDA workchains of the active-learning loop."""
