"""The training host's `edge` sub-commands (train, train-detector, weights, quantize, compile, export),
plugins of the device's CLI: pyproject.toml registers them under the entry points "edge.commands" and
edge/cli.py imports one only when it runs. Each module imports nothing from the train extra at module
level, so on a device install the commands are listed and say, in one line, which extra they need."""
