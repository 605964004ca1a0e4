"""The plugin's own errors (the ACME client has its own hierarchy in ``pytest_wec.acme``).

    WecError
     ├── ConfigError     a bad option, ini value or environment variable
     └── StackError      a part of the stack could not start, or is missing
"""

from __future__ import annotations

__all__ = ["ConfigError", "StackError", "WecError"]


class WecError(Exception):
    """Base of the plugin's errors."""


class ConfigError(WecError):
    """A setting has a bad value; the message names where it came from."""


class StackError(WecError):
    """A stack process is missing, failed to start, or did not become ready."""
