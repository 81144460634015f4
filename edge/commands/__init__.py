"""One module per device sub-command of `edge` (see edge/cli.py; the training host's are in convert/commands/)."""
