"""Errors a user can fix: the CLI prints them as one line (`error: ...`), never as a traceback."""


class UserError(ValueError):
    """Bad input named precisely: a missing path, a wrong column, an unknown config key."""
