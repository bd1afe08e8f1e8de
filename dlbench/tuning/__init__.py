"""Tuning inside studies: search spaces (space.py), samplers (samplers.py), the search of one
level (search.py) and the pruning rule a tuning trial trains with (pruning.py)."""
