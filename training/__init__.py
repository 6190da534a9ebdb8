"""editguard.training."""
