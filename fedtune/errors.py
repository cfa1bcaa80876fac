"""Errors a user can cause: each message is one sentence saying what, where and how to fix it."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-facing configuration mistake; the message says what and how to fix it."""


def require(ok: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def one_of(key: str, value: str, allowed: tuple[str, ...] | list[str]) -> None:
    """``key=value`` must be one of ``allowed``."""
    require(value in allowed, f"{key}='{value}' is unknown; use one of {', '.join(allowed)}.")


def at_least_one(**values: int) -> None:
    """Every keyword (``local_steps=...``) must be >= 1; the key is named in kebab-case."""
    for name, value in values.items():
        require(value >= 1, f"{name.replace('_', '-')}={value} must be at least 1.")
