"""The root of GFL's exception hierarchy.

Every error that can reach a user derives from `GflError` and carries a message
written for that user: the CLI prints it as one line and exits non-zero, the
control API turns it into a 4xx. Layers subclass it for their own failures.
"""


class GflError(Exception):
    """An error with a message meant for the user (no traceback needed)."""


class ConfigError(GflError):
    """The configuration or the datadir is missing, corrupt or inconsistent."""


class IdentityError(GflError):
    """The node key is missing, unreadable or has unsafe permissions."""
