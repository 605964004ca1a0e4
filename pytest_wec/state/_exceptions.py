"""Errors of the state DB. Every message names the DB by its URL, password masked.

    WecError                       (pytest_wec.errors)
     └── StateError                any failure of the state DB
          ├── StateURLError        a URL or path that names no usable DB (also a ConfigError)
          ├── StateUnavailableError the DB cannot be reached, or it failed mid-run
          └── StateSchemaError     the tables are missing or of another schema version
"""

from __future__ import annotations

from pytest_wec.errors import ConfigError, WecError

__all__ = ["StateError", "StateSchemaError", "StateURLError", "StateUnavailableError"]


class StateError(WecError):
    """Base of the state DB's errors."""


class StateURLError(StateError, ConfigError):
    """The URL or path is malformed, or names a backend the store does not support."""


class StateUnavailableError(StateError):
    """The DB could not be reached, or an operation on it failed."""


class StateSchemaError(StateError):
    """The DB holds no wec tables (and creating them was not asked for) or another version."""
