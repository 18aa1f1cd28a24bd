"""The small persistent key/value the collectors need (the store's meta part)."""

from __future__ import annotations

from typing import Protocol


class MetaStore(Protocol):
    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...


class MemoryMeta:
    """A MetaStore that forgets on restart: for one-shot runs and tests."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get_meta(self, key: str) -> str | None:
        return self.values.get(key)

    def set_meta(self, key: str, value: str) -> None:
        self.values[key] = value
