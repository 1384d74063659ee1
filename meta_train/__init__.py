"""Meta-training: gradient estimators, outer loop, Ray workers, logging."""
