"""User-facing errors. The CLI prints their message on one line and exits with code 2, with no traceback."""

__all__ = ["UserError", "InputSizeError"]


class UserError(ValueError):
    """A mistake in what the user asked for or supplied: a name, a file, a flag value."""


class InputSizeError(UserError):
    """An input size the network cannot take (a layer would shrink it below 1x1, or a head needs another size)."""
