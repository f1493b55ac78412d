"""Immutable value objects for the registry side, without `dataclasses`.

Owns `Value`: a base whose subclasses list their fields as `__slots__` (in order) and set them once in `__init__`
through `_init`; instances then compare equal when they are of the same class with equal fields, hash by their
fields, print as `Name(field=value, ...)` and refuse assignment, as a frozen dataclass does. `dataclasses` imports
`inspect` (and with it `ast`, `dis`, `tokenize`): about 10 ms that every `wasm-shim pull` would pay for a handful
of records (docs/benchmarks.md "The CLI beside oras and cosign").
"""

from __future__ import annotations


class Value:
    __slots__: tuple[str, ...] = ()

    def _init(self, *values: object) -> None:
        """Set the fields, in `__slots__` order (the only place they are ever set)."""
        for name, value in zip(self.__slots__, values, strict=True):
            object.__setattr__(self, name, value)

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot set {name}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Value)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((type(self).__name__, *self._fields()))

    def __reduce__(self) -> tuple[object, ...]:
        return type(self), self._fields()  # every subclass's __init__ takes its fields in `__slots__` order

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"
