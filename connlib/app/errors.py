"""What the command line's handlers share: the usage error and its exit code (EX_USAGE)."""

from __future__ import annotations

EXIT_USAGE = 64


class UsageError(Exception):
    """Bad arguments or environment: printed as one line, exit ``EXIT_USAGE``."""
