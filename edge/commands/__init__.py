"""One module per `edge` sub-command (see edge/cli.py)."""
