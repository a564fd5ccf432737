"""User-facing runs behind the CLI; one module per `l2m` subcommand."""
