"""The one error type users see: a single line naming the problem and the fix."""


class LowbitError(Exception):
    """A problem with the user's input or environment, reported as one line (the CLI prints no traceback)."""
