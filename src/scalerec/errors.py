"""The one exception type for user mistakes: the CLI prints its message and exits non-zero, no traceback."""


class UserError(Exception):
    """Bad input from the user (a file, a value, an option); the message says what and what was expected."""
