"""Errors that end a command, each with the exit code of the contract (DESIGN.md §7)."""

from __future__ import annotations


class DsgenError(Exception):
    """An error the CLI reports as one line, then exits with `exit_code`."""

    exit_code = 1


class ResultFailed(DsgenError):
    """The command ran but its result fails (e.g. too many failures)."""

    exit_code = 1


class InputError(DsgenError):
    """Bad input or configuration, found before any work."""

    exit_code = 2


class BudgetExceeded(DsgenError):
    """The next call would exceed --max-cost; everything so far is kept."""

    exit_code = 3


class RemoteError(DsgenError):
    """A remote service failed past all retries."""

    exit_code = 4
