"""Release gates: every graph output against the PyTorch reference (check.py) and across backends (compare.py)."""
