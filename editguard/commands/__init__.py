"""The ``editguard`` subcommands, one module per command group; :mod:`editguard.cli` assembles them."""
