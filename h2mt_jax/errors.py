"""Errors a user can fix from the command line, shared by every layer."""


class ConfigError(ValueError):
    """A config value the user can fix (an unknown method, variant or field, a mesh larger than the
    machine): `train.py` and `evaluate.py` print it as one line and exit with status 2."""
