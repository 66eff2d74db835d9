"""Errors a user can act on: the CLI prints their message as one line and exits with `exit_code`."""


class NnxError(Exception):
    """Bad input or an unusable environment: a one-line message naming what is wrong."""

    exit_code = 2


class DataError(NnxError):
    """A dataset file is missing, truncated or malformed."""


class ConfigError(NnxError):
    """A config file, key or value is invalid."""


class ModelFileError(NnxError):
    """A model file is not a valid nnx model."""


class BackendError(NnxError):
    """The requested device cannot be used here."""
