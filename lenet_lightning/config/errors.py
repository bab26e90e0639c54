"""Errors a user can fix from the command line; the entry points print them as one line, no traceback."""


class UserError(Exception):
    """Bad input or a missing resource, with a message that names the problem and the fix."""
