"""Exception hierarchy shared by all layers.

Every error raised on bad input is a subclass of :class:`SecaggError` *and* of the
builtin it refines (``ValueError`` for invalid parameters or data), so callers may
catch either.
"""


class SecaggError(Exception):
    """Base class of every exception raised by secagg."""


class ConfigError(SecaggError, ValueError):
    """A parameter is outside its allowed range; the message names it."""


class DataError(SecaggError, ValueError):
    """Input data is missing, malformed or non-finite; the message names the source."""


class ProtocolError(SecaggError):
    """A protocol message is out of order, replayed, tampered with or inconsistent."""


class NotEnoughClientsError(SecaggError):
    """Fewer clients survived than the protocol or round needs; nothing was aggregated."""
