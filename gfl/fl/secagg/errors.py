"""The one exception of secure aggregation."""

from gfl.errors import GflError


class SecAggError(GflError):
    """Secure-aggregation input is malformed or inconsistent, or an action was refused."""
