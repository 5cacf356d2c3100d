"""Labelling structures with an ASE calculator, run inside a CalcJob's working directory."""
