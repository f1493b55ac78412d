"""What a core module declares that a memory limit must cover, and that limit as wasmtime-py can enforce it.

Owns reading a module's memories and tables (imported and defined, with their limits) and whether it has a start
function from its binary (``declarations``: core spec 5.5, the import, table, memory and start sections; every
other section is skipped by its size) and ``store_limits``: base.py's memory rule ("Memory limits") turned into the
arguments of wasmtime-py's ``Store.set_limits``, which limit each memory and each table on its own and cannot sum
them. Pure: bytes and numbers in, numbers out (or ``EngineError`` naming what the module declares).

The split, when a limit is set (the sum of memory and tables never passes it):
- at most one memory (a module declaring several is refused: their sum cannot be limited here);
- every table must declare a maximum, and counts at it (``TABLE_ELEMENT_BYTES`` an element, as base.py says): a
  table can never grow past its declared maximum, so that is all it can take, while a table's growth below it
  could not be counted against the memory (a module with a table without a maximum is refused);
- the memory gets the rest. A module whose declared minimums already pass the limit is refused.
wasmtime enforces the counts as well (one instance, that many memories, that many tables): a declaration this
reader did not see makes the instantiation fail, never the guest unbounded.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..base import TABLE_ELEMENT_BYTES, EngineError

WASM_PAGE = 65536

_IMPORT, _TABLE, _MEMORY, _START = 2, 4, 5, 8  # section ids (core spec 5.5.2)
_HAS_MAX, _SHARED, _MEMORY64, _PAGE_SIZE = 1, 2, 4, 8  # limits flags (threads, memory64, custom-page-sizes)


@dataclass(frozen=True)
class Limits:
    """A memory's (in bytes) or a table's (in elements) declared minimum and maximum (None: none)."""

    minimum: int
    maximum: int | None
    shared: bool = False


@dataclass(frozen=True)
class Declarations:
    """The memories and tables a module declares, imported ones first (index order)."""

    memories: tuple[Limits, ...] = ()
    tables: tuple[Limits, ...] = ()
    start: bool = False  # a start function (section 8): instantiating the module runs its code


@dataclass(frozen=True)
class StoreLimits:
    """Arguments for ``wasmtime.Store.set_limits``; ``memory_size`` is also the memory's OOM threshold."""

    memory_size: int  # bytes one memory may reach
    table_elements: int  # elements one table may reach
    instances: int
    tables: int
    memories: int

    def as_kwargs(self) -> dict[str, int]:
        return {"memory_size": self.memory_size, "table_elements": self.table_elements,
                "instances": self.instances, "tables": self.tables, "memories": self.memories}


class _Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None):
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise ValueError("unexpected end")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def peek(self) -> int:
        if self.pos >= self.end:
            raise ValueError("unexpected end")
        return self.data[self.pos]

    def uleb(self) -> int:
        result = shift = 0
        while True:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
            if shift > 70:
                raise ValueError("LEB128 too long")

    def skip(self, count: int) -> None:
        if count > self.end - self.pos:
            raise ValueError("unexpected end")
        self.pos += count

    def name(self) -> None:
        self.skip(self.uleb())

    def limits(self, memory: bool) -> Limits:
        flags = self.byte()
        minimum = self.uleb()
        maximum = self.uleb() if flags & _HAS_MAX else None
        unit = 1
        if memory:
            unit = WASM_PAGE
            if flags & _PAGE_SIZE:
                unit = 1 << self.uleb()
        return Limits(minimum * unit, None if maximum is None else maximum * unit, bool(flags & _SHARED))

    def reftype(self) -> None:
        kind = self.byte()
        if kind in (0x63, 0x64):  # (ref null? heaptype) of the function-references proposal
            self.heaptype()

    def heaptype(self) -> None:
        self.sleb33()

    def sleb33(self) -> None:
        while self.byte() & 0x80:
            pass

    def valtype(self) -> None:
        self.reftype()  # numeric and vector types are one byte; reference types may carry a heap type

    def table(self) -> Limits:
        self.reftype()
        return self.limits(memory=False)


def declarations(wasm: bytes) -> Declarations:
    """The memories and tables ``wasm`` (a core module wasmtime compiled) declares.

    ValueError saying what could not be read: a malformed section, or a table with an initializer expression
    (the GC proposal's form, which this reader does not evaluate).
    """
    reader = _Reader(wasm, 8)
    memories: list[Limits] = []
    tables: list[Limits] = []
    start = False
    while reader.pos < reader.end:
        section = reader.byte()
        size = reader.uleb()
        body = _Reader(wasm, reader.pos, reader.pos + size)
        reader.skip(size)
        if section == _IMPORT:
            for _ in range(body.uleb()):
                body.name()
                body.name()
                kind = body.byte()
                if kind == 0x00:  # function: a type index
                    body.uleb()
                elif kind == 0x01:
                    tables.append(body.table())
                elif kind == 0x02:
                    memories.append(body.limits(memory=True))
                elif kind == 0x03:  # global: a value type and mutability
                    body.valtype()
                    body.byte()
                elif kind == 0x04:  # tag (exception handling): an attribute and a type index
                    body.byte()
                    body.uleb()
                else:
                    raise ValueError(f"unknown import kind {kind:#x}")
        elif section == _TABLE:
            for _ in range(body.uleb()):
                if body.peek() == 0x40:  # 0x40 0x00 tabletype expr (GC proposal)
                    raise ValueError("a table with an initializer expression")
                tables.append(body.table())
        elif section == _MEMORY:
            for _ in range(body.uleb()):
                memories.append(body.limits(memory=True))
        elif section == _START:
            start = True
    return Declarations(tuple(memories), tuple(tables), start)


def store_limits(declared: Declarations | str, limit: int | None, name: str) -> StoreLimits | None:
    """The wasmtime-py limits that keep a module's memory and tables together within ``limit`` (None: no limit).

    ``declared`` is what ``declarations`` read, or why it could not. EngineError naming ``name`` and what it
    declares when no split fits (see the module docstring).
    """
    if limit is None or limit <= 0:
        return None
    if isinstance(declared, str):
        raise EngineError(f"{name}: its memories and tables cannot be read ({declared}), so its memory limit "
                          f"({limit} bytes) cannot be applied to them; remove the limit to run it")
    mib = f"{limit / (1 << 20):g} MiB"
    if len(declared.memories) > 1:
        raise EngineError(
            f"{name} declares {len(declared.memories)} linear memories; with a memory limit "
            f"({limit} bytes, {mib}) a module in the daemon may have one: wasmtime-py limits each memory on its "
            "own and cannot bound their sum. Build it with one memory, or remove the limit"
        )
    count = len(declared.tables)
    unbounded = [index for index, table in enumerate(declared.tables) if table.maximum is None]
    if unbounded:
        raise EngineError(
            f"{name} declares a table without a maximum size (table {unbounded[0]}); with a memory limit "
            f"({limit} bytes, {mib}) a module in the daemon must declare one for every table: wasmtime-py can cap "
            "each table but cannot count its growth against the memory. Give the table a maximum, or remove the limit"
        )
    maxima = [table.maximum for table in declared.tables if table.maximum is not None]
    tables_bytes = sum(maxima) * TABLE_ELEMENT_BYTES
    memory_size = limit - tables_bytes
    memory_min = declared.memories[0].minimum if declared.memories else 0
    if memory_size < memory_min:
        raise EngineError(
            f"{name} declares {memory_min} bytes of initial memory and {count} table(s) of up to {tables_bytes} "
            f"bytes in all (their declared maximum sizes); together more than its memory limit ({limit} bytes, {mib})"
        )
    return StoreLimits(memory_size=memory_size, table_elements=max(maxima, default=0), instances=1, tables=count,
                       memories=len(declared.memories))
