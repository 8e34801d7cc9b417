"""User-facing errors: one line on stderr, a non-zero exit, never a traceback."""

from __future__ import annotations


class SpmctlError(Exception):
    """An error a user can fix; its message is the one line they see."""

    exit_code = 1


class ConfigError(SpmctlError):
    """Bad configuration (file, key, value): exit code 2, like a usage error."""

    exit_code = 2
