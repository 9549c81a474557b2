"""Errors the command line reports as one clear line."""


class UserError(Exception):
    """A problem the user can fix (bad name, missing file, broken artifact): printed without a traceback."""


class ValidationFailed(Exception):
    """A built artifact's outputs do not match the eager model within tolerance."""
