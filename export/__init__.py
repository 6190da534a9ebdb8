"""editguard.export."""
