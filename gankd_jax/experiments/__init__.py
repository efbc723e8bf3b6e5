"""Experiments that reproduce a paper's claims end to end (each a `python -m` command)."""
