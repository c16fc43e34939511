"""One module per `animdreamer` subcommand (see animdreamer_jax/cli.py)."""
