"""The ``pipeline`` subcommands, one module each; :mod:`pipeline.cli` assembles them."""
