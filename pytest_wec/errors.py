"""The plugin's own errors (the ACME client has its own hierarchy in ``pytest_wec.acme``).

    WecError
     ├── ConfigError     a bad option, ini value or environment variable
     ├── StackError      a part of the stack could not start, or is missing
     ├── BaselineError   no saved run matches a baseline spec, or it cannot be read
     └── UnreachableError  a worker cannot reach an address it was given
"""

from __future__ import annotations

__all__ = ["BaselineError", "ConfigError", "StackError", "UnreachableError", "WecError"]


class WecError(Exception):
    """Base of the plugin's errors."""


class ConfigError(WecError):
    """A setting has a bad value; the message names where it came from."""


class StackError(WecError):
    """A stack process is missing, failed to start, or did not become ready."""


class BaselineError(WecError):
    """A baseline to compare with is missing or unreadable; the message lists what exists."""


class UnreachableError(WecError):
    """A worker cannot reach an address it was given; the message names it and what it is."""
