from typing import Any

LONG: int
DOUBLE: int
FLOAT: int
BOOLEAN: int
STRING: int
BYTES: int
ENUM: int
NULLABLE: int
ARRAY: int
RECORD: int

class Writer:
    """Writer(program, header=b''): call it with a record for header + Avro body."""

    def __init__(self, program: tuple[Any, ...], header: bytes = b"") -> None: ...
    def __call__(self, record: Any, /) -> bytes: ...
