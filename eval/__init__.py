"""Held-out evaluation of learned optimizers against tuned baselines."""
