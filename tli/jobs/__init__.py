"""The jobs behind the entry points (train.py, scan.py, evaluate.py) and sweep callbacks."""
