"""Errors a user can fix: the CLI prints them as one line (`error: ...`), never as a traceback."""


class UserError(ValueError):
    """Bad input named precisely: a missing path, a wrong column, an unknown config key."""


class TrainingError(RuntimeError):
    """Training cannot go on for a reason the user can act on (non-finite loss, too little data, a
    checkpoint refused). Workers report it instead of raising it: it would only happen again."""
