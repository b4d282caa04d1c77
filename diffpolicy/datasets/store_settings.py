"""Settings records of generated demo stores: what decides a store's episodes.

A generator (Meta-World scripted demos, Push-T self-play) writes its settings, a
frozen dataclass deriving from :class:`StoreSettings`, into the store's root
attributes, and refuses to extend a store whose recorded settings differ.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path


class StoreSettings:
    """Mixin for the frozen settings dataclasses: a readable form and the refusal message."""

    def describe(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in asdict(self).items())

    def mismatch(self, stored: "StoreSettings", path: Path, made: str, asker: str) -> str | None:
        """None when ``stored`` (read from ``path``) equals these settings, else the message
        naming the fields that differ (``made``: how the store was made; ``asker``: who asks)."""
        if stored == self:
            return None
        a, b = asdict(stored), asdict(self)
        diff = [k for k in b if a[k] != b[k]]
        return (f"{path}: the store was {made} with other settings ({', '.join(diff)} "
                f"{'differs' if len(diff) == 1 else 'differ'}): store has {stored.describe()}; "
                f"{asker} asks for {self.describe()}. Use the store's settings to extend it, or "
                f"another --out")
