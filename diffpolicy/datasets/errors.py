"""Errors raised by the dataset layer.

Every message names the store (path) and, where there is one, the key, and
says what was expected and what was found.  All of them subclass
``DatasetError`` (itself a ``ValueError``) so callers can catch one type.
"""
from __future__ import annotations


class DatasetError(ValueError):
    """A demo store is missing, malformed, or does not fit the task."""


class CorruptDataError(DatasetError):
    """Stored bytes cannot be decoded, or decoded values are NaN/inf."""


class ReadOnlyStoreError(DatasetError, PermissionError):
    """A write was attempted on a store opened with ``mode="r"``."""


class ChecksumError(DatasetError):
    """A downloaded file or unpacked tree does not have the expected SHA-256."""
