"""User-facing errors. The CLI prints any of these as one line, without a traceback."""

from __future__ import annotations


class EdgeError(Exception):
    """An error the user can act on. `exit_code` is what the CLI exits with."""

    exit_code = 1


class ImageLoadError(EdgeError):
    """An image file is missing, unreadable, truncated or not an image."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class BundleError(EdgeError):
    """A model bundle is missing, incomplete, tampered with or of an unknown schema."""

    exit_code = 3


class MissingExtraError(EdgeError):
    """An optional dependency group is not installed."""

    exit_code = 4

    def __init__(self, command: str, extra: str, module: str):
        super().__init__(
            f"`{command}` needs the '{extra}' extra ({module} is not installed): pip install '.[{extra}]'"
        )


class RuntimeUnavailableError(EdgeError):
    """No usable inference runtime / delegate for the requested backend."""

    exit_code = 5


class DataError(EdgeError):
    """A dataset folder cannot be used (empty, a single class, unknown class names...)."""

    exit_code = 2
