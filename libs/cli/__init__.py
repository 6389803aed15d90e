"""The `atas` command line: every module of this package that defines ``register`` is a subcommand."""
