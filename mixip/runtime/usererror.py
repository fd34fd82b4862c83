"""The error a person can act on: one line for them, and the exit code of the process that stops
on it (the command line's `CliError`, the review page's start-up)."""

from __future__ import annotations


class UserError(Exception):
    """A one-line message for the user; the command exits non-zero."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
