"""The one error type a user can fix: its message says what to change (file:line, flag, config key). The CLI turns it
into exit code 2 and a one-line message."""


class UserError(Exception):
    """An error the user can fix; the message says what to change (file:line, flag, config key)."""
