"""Workchains that label training structures with first-principles codes (same interface as ``tace.label_ase``)."""
