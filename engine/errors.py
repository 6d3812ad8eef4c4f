"""Errors a user can fix: the tools print them as one line and exit 2 (traceback only with --debug)."""


class UserError(Exception):
    """Bad input (file, name, option) with a message that says what is wrong and where."""
