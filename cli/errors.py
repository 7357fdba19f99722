"""The one error the CLI shows its user."""


class UserError(Exception):
    """A mistake the user can fix: printed as one line, exit code 2."""
