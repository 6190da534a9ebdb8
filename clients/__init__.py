"""editguard.clients."""
