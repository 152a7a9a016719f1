"""Avro codec for every record that crosses Kafka.

Two wire encodings, chosen by configuration and both accepted when decoding:

* Avro single-object encoding (default, no registry): ``C3 01`` + the 8-byte
  little-endian CRC-64-AVRO fingerprint of the writer schema + the Avro body.
  Decodable from the ``.avsc`` files alone.
* Confluent wire format (when ``SCHEMA_REGISTRY_URL`` is set): ``00`` + the 4-byte
  big-endian schema id + the Avro body; schemas are registered under
  ``<topic>-value`` (TopicNameStrategy).

Encoding does not go through fastavro: each schema is compiled once, when its first
encoder is asked for, into a program for the C writer (``_avro_writer.c``), which reads the msgspec
struct's attributes and returns header + Avro body (byte-identical to
``fastavro.schemaless_writer``). Where the extension is not built, a Python function
generated per schema does the same, 3-4 times slower. A schema using a type the compilers do
not handle falls back to fastavro.

Decoding a single-object record written with today's schema goes through a reader
compiled the same way (one generated function per record schema, straight into the
msgspec struct). Any other writer schema is resolved by fastavro against the current
reader schema, so records written by an older, backward-compatible schema version decode
into today's types.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from operator import attrgetter
from pathlib import Path
from typing import Any, TypeVar

import fastavro
import msgspec
import msgspec.inspect as mi
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint, to_parsing_canonical_form

from marketpipe.records import RECORD_TYPES, Record
from schemas import SCHEMA_DIR

try:  # built from _avro_writer.c at install; without it the generated Python writers encode
    from marketpipe import _avro_writer as _native
except ImportError:  # pragma: no cover - every install made by `make` builds it
    _native = None  # type: ignore[assignment]

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
R = TypeVar("R", bound=Record)


class DecodeError(ValueError):
    """The bytes are not a record this codec can read; the message says why."""


@dataclass(frozen=True)
class AvroSchema:
    name: str
    raw: dict[str, Any]
    parsed: Any
    fingerprint: bytes

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AvroSchema:
        parsed = fastavro.parse_schema(raw)
        canonical = to_parsing_canonical_form(raw)
        return cls(
            name=_full_name(raw),
            raw=raw,
            parsed=parsed,
            fingerprint=bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")),
        )

    @classmethod
    def load(cls, path: Path) -> AvroSchema:
        return cls.from_dict(json.loads(path.read_text()))


def _full_name(raw: dict[str, Any]) -> str:
    namespace = raw.get("namespace")
    return f"{namespace}.{raw['name']}" if namespace else str(raw["name"])


def load_schemas(schema_dir: Path = SCHEMA_DIR) -> dict[str, AvroSchema]:
    """Current schema of each record type, by ``Record.schema_name``."""
    return {rt.schema_name: AvroSchema.load(schema_dir / f"{rt.schema_name}.avsc") for rt in RECORD_TYPES}


class AvroCodec:
    def __init__(
        self, schema_registry_url: str | None = None, schema_dir: Path = SCHEMA_DIR, native: bool = True
    ) -> None:
        """``native=False`` encodes with the generated Python writers even where the C writer
        is built (to compare the two)."""
        self._schemas = load_schemas(schema_dir)
        self._type_by_name = {self._schemas[rt.schema_name].name: rt for rt in RECORD_TYPES}
        # writer schemas this codec can decode, by fingerprint (current + registered older versions)
        self._writers: dict[bytes, AvroSchema] = {s.fingerprint: s for s in self._schemas.values()}
        self._registry = _Registry(schema_registry_url) if schema_registry_url else None
        self._encoders: dict[tuple[str, str | None], Callable[[Any], bytes]] = {}
        self._native = native
        # readers of records written with today's schema, by fingerprint; the target type is
        # the one the schema maps to (None where compile_reader does not handle the schema)
        self._body_readers = {
            self._schemas[rt.schema_name].fingerprint: (
                rt,
                compile_reader(self._schemas[rt.schema_name].parsed, rt),
            )
            for rt in RECORD_TYPES
        }

    def schema_for(self, record_type: type[Record]) -> AvroSchema:
        return self._schemas[record_type.schema_name]

    def add_writer_schema(self, raw: dict[str, Any]) -> AvroSchema:
        """Make an older (or newer) version of a schema decodable by fingerprint."""
        schema = AvroSchema.from_dict(raw)
        self._writers[schema.fingerprint] = schema
        return schema

    # -- encoding ---------------------------------------------------------------------

    def encode(self, record: Record, topic: str | None = None) -> bytes:
        encode = self._encoders.get((record.schema_name, topic))
        if encode is None:
            encode = self.encoder(type(record), topic)
        return encode(record)

    def encoder(self, record_type: type[Record], topic: str | None = None) -> Callable[[Any], bytes]:
        """``encode`` for one record type and topic, with the header and writer looked up once
        (for loops over many records of a type)."""
        key = (record_type.schema_name, topic)
        found = self._encoders.get(key)
        if found is not None:
            return found
        schema = self._schemas[record_type.schema_name]
        header = self._header(schema, topic)
        program = native_program(schema.parsed) if self._native else None
        encode = _native.Writer(program, header) if program is not None else _python_encoder(schema, header)
        self._encoders[key] = encode
        return encode

    def _header(self, schema: AvroSchema, topic: str | None) -> bytes:
        if self._registry is None:
            return SINGLE_OBJECT_MAGIC + schema.fingerprint
        if topic is None:
            raise ValueError("the Confluent wire format needs the topic name to pick the subject")
        schema_id = self._registry.id_for(f"{topic}-value", schema)
        return CONFLUENT_MAGIC + struct.pack(">I", schema_id)

    def encode_with(self, raw_schema: dict[str, Any], value: dict[str, Any]) -> bytes:
        """Single-object encoding with an explicit writer schema (schema-evolution tests, tools)."""
        schema = AvroSchema.from_dict(raw_schema)
        return SINGLE_OBJECT_MAGIC + schema.fingerprint + _write(schema, value)

    # -- decoding ---------------------------------------------------------------------

    def decode(self, data: bytes | bytearray | memoryview, record_type: type[R] | None = None) -> R:
        if data[:2] == SINGLE_OBJECT_MAGIC:
            fp = data[2:10]
            target, read = self._body_readers.get(fp if type(fp) is bytes else bytes(fp), (None, None))
            if read is not None and (record_type is None or record_type is target):
                record: R = self._read_compiled(read, data, target)
                return record
        writer, body = self._writer_of(data)
        target = record_type or self._type_by_name.get(writer.name)
        if target is None:
            raise DecodeError(f"no record type for schema {writer.name}")
        reader = self._schemas[target.schema_name]
        try:
            value = fastavro.schemaless_reader(io.BytesIO(body), writer.parsed, reader.parsed)
            return msgspec.convert(value, type=target)  # type: ignore[return-value]
        except (
            msgspec.ValidationError,
            SchemaResolutionError,
            EOFError,
            ValueError,
            TypeError,
            IndexError,
        ) as exc:
            raise DecodeError(f"cannot decode {writer.name} as {target.__name__}: {exc}") from exc

    def field_reader(
        self, record_type: type[Record], fields: Sequence[str]
    ) -> Callable[[bytes | bytearray | memoryview], tuple[Any, ...]]:
        """Decode only some fields of one record type, as a tuple in the order asked (for a
        stage that needs a few fields of every record: no struct, no text it does not use).

        Records of today's schema are read by a projection of the compiled reader: it checks
        the body as ``decode`` does up to the last field asked for, skips the strings left out
        without decoding their UTF-8, and reads nothing after that field. Any other writer
        schema goes through ``decode``. Raises ``DecodeError``.
        """
        unknown = [name for name in fields if name not in record_type.__struct_fields__]
        if unknown:
            raise ValueError(f"{record_type.__name__} has no field(s) {unknown}")
        schema = self._schemas[record_type.schema_name]
        project = compile_reader(schema.parsed, record_type, fields)
        prefix = SINGLE_OBJECT_MAGIC + schema.fingerprint
        pick = attrgetter(*fields)
        read_compiled, decode = self._read_compiled, self.decode

        def read(data: bytes | bytearray | memoryview) -> tuple[Any, ...]:
            if project is not None and data[:10] == prefix:
                values: tuple[Any, ...] = read_compiled(project, data, record_type)
                return values
            found = pick(decode(data, record_type))
            return found if len(fields) > 1 else (found,)

        return read

    def _read_compiled(self, read: BodyReader, data: bytes | bytearray | memoryview, target: Any) -> Any:
        """Today's schema: the body straight into the struct (trailing bytes ignored, as fastavro does)."""
        buf = data if type(data) is bytes else bytes(data)
        try:
            return read(buf, 10)[0]
        except (IndexError, struct.error) as exc:
            name = self._schemas[target.schema_name].name
            raise DecodeError(f"cannot decode {name} as {target.__name__}: body ends early ({exc})") from exc
        except ValueError as exc:  # BodyEndsEarly, UnicodeDecodeError
            name = self._schemas[target.schema_name].name
            raise DecodeError(f"cannot decode {name} as {target.__name__}: {exc}") from exc

    def _writer_of(self, data: bytes | bytearray | memoryview) -> tuple[AvroSchema, bytes]:
        if data[:2] == SINGLE_OBJECT_MAGIC and len(data) >= 10:
            fp = bytes(data[2:10])
            writer = self._writers.get(fp)
            if writer is None:
                raise DecodeError(f"unknown schema fingerprint {fp.hex()} (is the schema in schemas/?)")
            return writer, bytes(data[10:])
        if data[:1] == CONFLUENT_MAGIC and len(data) >= 5:
            if self._registry is None:
                raise DecodeError("Confluent wire format record but no SCHEMA_REGISTRY_URL is configured")
            (schema_id,) = struct.unpack(">I", data[1:5])
            return self._registry.schema_by_id(schema_id), bytes(data[5:])
        raise DecodeError(f"not an Avro record: leading bytes {bytes(data[:4]).hex() or '(empty)'}")


def _python_encoder(schema: AvroSchema, header: bytes) -> Callable[[Any], bytes]:
    """``encode`` without the C writer: the generated Python writer, else fastavro."""
    write_body = compile_writer(schema.parsed)
    if write_body is None:

        def encode(record: Any) -> bytes:
            return header + _write(schema, msgspec.to_builtins(record, builtin_types=(bytes,)))

    else:

        def encode(record: Any) -> bytes:
            out = bytearray(header)
            write_body(out, record)
            return bytes(out)

    return encode


def _write(schema: AvroSchema, value: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema.parsed, value)
    return out.getvalue()


# -- compiled body writers ----------------------------------------------------------

BodyWriter = Callable[[bytearray, Any], None]
"""Appends the Avro binary encoding of a value (a msgspec struct for records) to ``out``."""

# Avro types of a fixed width, packed with struct (``?`` packs truthiness as 0/1, as Avro does)
_FIXED_FORMATS = {"double": "d", "float": "f", "boolean": "?"}
# varint bytes of every 14-bit group: as the last group, and as a middle one (continuation bits set)
_LAST_GROUP = [bytes([n]) if n < 0x80 else bytes([n & 0x7F | 0x80, n >> 7]) for n in range(0x4000)]
_MIDDLE_GROUP = [bytes([n & 0x7F | 0x80, n >> 7 | 0x80]) for n in range(0x4000)]


class UnsupportedSchema(Exception):
    """The schema uses an Avro type compile_writer does not handle."""


def compile_writer(parsed: dict[str, Any]) -> BodyWriter | None:
    """A writer for a fastavro-parsed record schema, or None when it needs fastavro."""
    try:
        return _compile(parsed, parsed.get("__named_schemas", {}), frozenset())
    except UnsupportedSchema:
        return None


# the C writer's step for each primitive type
_NATIVE_PRIMITIVES = (
    {
        "int": _native.LONG,
        "long": _native.LONG,
        "double": _native.DOUBLE,
        "float": _native.FLOAT,
        "boolean": _native.BOOLEAN,
        "string": _native.STRING,
        "bytes": _native.BYTES,
    }
    if _native
    else {}
)


def native_program(parsed: dict[str, Any]) -> tuple[Any, ...] | None:
    """The program of the C writer (``marketpipe._avro_writer``) for a fastavro-parsed record
    schema, or None when it needs fastavro or the C writer is not built. It handles the same
    types as ``compile_writer``."""
    if _native is None:
        return None
    try:
        return _program(parsed, parsed.get("__named_schemas", {}), frozenset())
    except UnsupportedSchema:
        return None


def _program(schema: Any, named: dict[str, Any], enclosing: frozenset[str]) -> tuple[Any, ...]:
    kind, node = _resolve(schema, named, enclosing)
    if kind == "union":
        null_index, value = node
        return (_native.NULLABLE, null_index, _program(value, named, enclosing))
    if kind in _NATIVE_PRIMITIVES:
        return (_NATIVE_PRIMITIVES[kind],)
    if kind == "enum":
        return (_native.ENUM, {symbol: i for i, symbol in enumerate(node["symbols"])}, node["name"])
    if kind == "array":
        return (_native.ARRAY, _program(node["items"], named, enclosing))
    if kind == "record":
        inner = enclosing | {node["name"]}
        fields = tuple((f["name"], _program(f["type"], named, inner)) for f in node["fields"])
        return (_native.RECORD, fields)
    raise UnsupportedSchema(f"type {kind}")


def _resolve(schema: Any, named: dict[str, Any], enclosing: frozenset[str]) -> tuple[str, Any]:
    """What a schema node is, named types looked up: ``("union", (null index, T))`` for a
    ``null`` union, else its type name and the node as a dict. UnsupportedSchema for other
    unions, recursive types and logical types."""
    if isinstance(schema, list):
        return "union", _null_union(schema)
    if isinstance(schema, str):
        if schema in named:
            if schema in enclosing:
                raise UnsupportedSchema(f"recursive type {schema}")
            return _resolve(named[schema], named, enclosing)
        schema = {"type": schema}
    if "logicalType" in schema:
        raise UnsupportedSchema(f"logical type {schema['logicalType']}")
    return schema["type"], schema


def _null_union(branches: list[Any]) -> tuple[int, Any]:
    """``[null, T]`` or ``[T, null]``: the index of null as written in the schema, and T."""
    if len(branches) != 2 or branches.count("null") != 1:
        raise UnsupportedSchema(f"union {branches}")
    null_index = branches.index("null")
    return null_index, branches[1 - null_index]


def long_bytes(value: int) -> bytes:
    """Zigzag varint of an Avro int or long (14 bits per table lookup: twice as fast as 7 per loop)."""
    n = (value << 1) ^ (value >> 63)
    if 0 <= n < 0x4000:
        return _LAST_GROUP[n]
    if 0 < n < 1 << 56:  # up to eight bytes (every microsecond timestamp): no loop
        if n < 1 << 28:
            return _MIDDLE_GROUP[n & 0x3FFF] + _LAST_GROUP[n >> 14]
        if n < 1 << 42:
            return _MIDDLE_GROUP[n & 0x3FFF] + _MIDDLE_GROUP[n >> 14 & 0x3FFF] + _LAST_GROUP[n >> 28]
        return (
            _MIDDLE_GROUP[n & 0x3FFF]
            + _MIDDLE_GROUP[n >> 14 & 0x3FFF]
            + _MIDDLE_GROUP[n >> 28 & 0x3FFF]
            + _LAST_GROUP[n >> 42]
        )
    if n < 0 or n >> 64:
        raise OverflowError(f"{value} does not fit in an Avro long")
    groups = []
    while n >= 0x4000:
        groups.append(_MIDDLE_GROUP[n & 0x3FFF])
        n >>= 14
    groups.append(_LAST_GROUP[n])
    return b"".join(groups)


def _compile(schema: Any, named: dict[str, Any], enclosing: frozenset[str]) -> BodyWriter:
    kind, schema = _resolve(schema, named, enclosing)
    if kind == "union":
        null_index, value = schema
        return _union_writer(null_index, value, named, enclosing)
    if kind in _FIXED_FORMATS:
        return _fixed_writer(_FIXED_FORMATS[kind])
    if kind in ("int", "long"):
        return _write_long
    if kind == "string":
        return _write_string
    if kind == "bytes":
        return _write_bytes
    if kind == "enum":
        return _enum_writer(schema["name"], schema["symbols"])
    if kind == "array":
        return _array_writer(schema["items"], named, enclosing)
    if kind == "record":
        return _record_writer(schema, named, enclosing | {schema["name"]})
    raise UnsupportedSchema(f"type {kind}")


def _write_long(out: bytearray, value: int) -> None:
    out += long_bytes(value)


def _write_string(out: bytearray, value: str) -> None:
    data = value.encode()
    out += long_bytes(len(data))
    out += data


def _write_bytes(out: bytearray, value: bytes) -> None:
    out += long_bytes(len(value))
    out += value


def _fixed_writer(fmt: str) -> BodyWriter:
    pack = struct.Struct("<" + fmt).pack

    def write(out: bytearray, value: Any) -> None:
        out += pack(value)

    return write


def _enum_writer(name: str, symbols: list[str]) -> BodyWriter:
    index_bytes = {symbol: long_bytes(i) for i, symbol in enumerate(symbols)}

    def write(out: bytearray, value: str) -> None:
        encoded = index_bytes.get(value)
        if encoded is None:
            raise ValueError(f"{value!r} is not a symbol of enum {name}")
        out += encoded

    return write


def _union_writer(
    null_index: int, value: Any, named: dict[str, Any], enclosing: frozenset[str]
) -> BodyWriter:
    """The branch index as written in the schema, then the value."""
    write_value = _compile(value, named, enclosing)
    null_tag, value_tag = long_bytes(null_index), long_bytes(1 - null_index)

    def write(out: bytearray, value: Any) -> None:
        if value is None:
            out += null_tag
        else:
            out += value_tag
            write_value(out, value)

    return write


def _record_writer(schema: dict[str, Any], named: dict[str, Any], enclosing: frozenset[str]) -> BodyWriter:
    return _WriterBuilder(named, enclosing).record(schema)


def _define(lines: list[str], env: dict[str, Any]) -> Any:
    """The one function the source ``lines`` define, with ``env`` as its globals."""
    namespace = dict(env)
    exec("\n".join(lines), namespace)  # source built from the parsed schema only
    (defined,) = (value for name, value in namespace.items() if name not in env and name != "__builtins__")
    return defined


class _SourceBuilder:
    """What the generated writers and readers share: constants named into the function's globals."""

    def __init__(self, env: dict[str, Any]) -> None:
        self.env = env
        self.counter = 0

    def constant(self, value: Any) -> str:
        self.counter += 1
        name = f"_c{self.counter}"
        self.env[name] = value
        return name


class _WriterBuilder(_SourceBuilder):
    """Generates one Python function per record schema, like the readers below: primitives are
    written inline (per-field function calls are most of the cost in CPython), a run of
    fixed-width fields is one struct.pack, strings go through a per-field cache of their
    encoded bytes (exchange, symbol and connection names repeat in every record), arrays and
    nested records through the helper writers."""

    def __init__(self, named: dict[str, Any], enclosing: frozenset[str]) -> None:
        # lg, mg: varint bytes of a 14-bit group as the last one and as a middle one
        super().__init__({"long_bytes": long_bytes, "lg": _LAST_GROUP, "mg": _MIDDLE_GROUP})
        self.named = named
        self.enclosing = enclosing

    def record(self, schema: dict[str, Any]) -> BodyWriter:
        lines = ["def write(out, record):"]
        run: list[str] = []  # fields of the current run of fixed-width fields
        run_format = ""
        for field in schema["fields"]:
            fmt = _FIXED_FORMATS.get(_primitive_name(field["type"], self.named) or "")
            if fmt is not None:
                run.append(field["name"])
                run_format += fmt
                continue
            lines += self.fixed_run(run, run_format)
            run, run_format = [], ""
            lines += self.value(f"record.{field['name']}", field["type"], "    ")
        lines += self.fixed_run(run, run_format)
        write: BodyWriter = _define(lines, self.env)
        return write

    def fixed_run(self, names: list[str], fmt: str) -> list[str]:
        if not names:
            return []
        pack = self.constant(struct.Struct("<" + fmt).pack)
        return [f"    out += {pack}({', '.join(f'record.{name}' for name in names)})"]

    def value(self, expression: str, schema: Any, indent: str) -> list[str]:
        kind = _primitive_name(schema, self.named)
        if kind in ("int", "long"):  # long_bytes inline up to eight bytes (every timestamp)
            return [
                f"{indent}n = ({expression} << 1) ^ ({expression} >> 63)",  # zigzag: never negative
                f"{indent}if n < 0x4000: out += lg[n]",
                f"{indent}elif n < 0x10000000: out += mg[n & 0x3FFF] + lg[n >> 14]",
                f"{indent}elif n < 0x40000000000: out += mg[n & 0x3FFF] + mg[n >> 14 & 0x3FFF] + lg[n >> 28]",
                f"{indent}elif n < 0x100000000000000:",
                f"{indent}    out += mg[n & 0x3FFF] + mg[n >> 14 & 0x3FFF]"
                " + mg[n >> 28 & 0x3FFF] + lg[n >> 42]",
                f"{indent}else: out += long_bytes({expression})",
            ]
        if kind == "string":
            return [f"{indent}out += {self.constant(_string_encoder())}({expression})"]
        if kind in _FIXED_FORMATS:
            pack = self.constant(struct.Struct("<" + _FIXED_FORMATS[kind]).pack)
            return [f"{indent}out += {pack}({expression})"]
        if isinstance(schema, list):
            return self.union(expression, schema, indent)
        writer = self.constant(_compile(schema, self.named, self.enclosing))
        return [f"{indent}{writer}(out, {expression})"]

    def union(self, expression: str, branches: list[Any], indent: str) -> list[str]:
        """``[null, T]`` or ``[T, null]``: the branch index as written in the schema, then the value."""
        null_index, value = _null_union(branches)
        null_tag = self.constant(long_bytes(null_index))
        value_tag = self.constant(long_bytes(1 - null_index))
        variable = f"u{self.counter}"
        return [
            f"{indent}{variable} = {expression}",
            f"{indent}if {variable} is None:",
            f"{indent}    out += {null_tag}",
            f"{indent}else:",
            f"{indent}    out += {value_tag}",
            *self.value(variable, value, indent + "    "),
        ]


def _string_encoder(limit: int = 4096) -> Callable[[str], bytes]:
    """Length-prefixed UTF-8 of a string, remembered for the last ``limit`` distinct values."""
    cache: dict[str, bytes] = {}

    def encode(value: str) -> bytes:
        found = cache.get(value)
        if found is None:
            data = value.encode()
            found = long_bytes(len(data)) + data
            if len(cache) >= limit:
                cache.clear()
            cache[value] = found
        return found

    return encode


def _record_format(record: dict[str, Any], named: dict[str, Any]) -> str | None:
    """The struct format of a record whose fields are all fixed-width primitives, else None."""
    formats = [_FIXED_FORMATS.get(_primitive_name(field["type"], named) or "") for field in record["fields"]]
    return "".join(f for f in formats if f is not None) if None not in formats else None


def _primitive_name(schema: Any, named: dict[str, Any]) -> str | None:
    if isinstance(schema, dict) and "logicalType" not in schema and isinstance(schema["type"], str):
        schema = schema["type"]
    return schema if isinstance(schema, str) and schema not in named else None


def _array_writer(items: Any, named: dict[str, Any], enclosing: frozenset[str]) -> BodyWriter:
    item = named.get(items, items) if isinstance(items, str) else items
    if isinstance(item, dict) and item["type"] == "record":
        fmt = _record_format(item, named)
        if fmt:
            return _flat_record_array_writer(fmt, [field["name"] for field in item["fields"]])
    if item == "string" or item == {"type": "string"}:  # e.g. Candle.markets: cached encodings
        return _string_array_writer()
    write_item = _compile(items, named, enclosing)

    def write(out: bytearray, values: Any) -> None:
        if values:
            out += long_bytes(len(values))
            for value in values:
                write_item(out, value)
        out.append(0)

    return write


def _string_array_writer() -> BodyWriter:
    encode = _string_encoder()

    def write(out: bytearray, values: Any) -> None:
        if values:
            out += long_bytes(len(values))
            out += b"".join(map(encode, values))
        out.append(0)

    return write


def _flat_record_array_writer(item_format: str, names: list[str]) -> BodyWriter:
    """An array of records of fixed-width fields only (e.g. Level): one struct.pack per item,
    joined (faster than packing every item with one format built for the count)."""
    fields = ", ".join(f"value.{name}" for name in names)
    lines = [
        "def write(out, values):",
        "    if values:",
        "        out += long_bytes(len(values))",
        f"        out += b''.join([pack({fields}) for value in values])",
        "    out.append(0)",
    ]
    pack = struct.Struct("<" + item_format).pack
    write: BodyWriter = _define(lines, {"long_bytes": long_bytes, "pack": pack})
    return write


# -- compiled body readers ----------------------------------------------------------

BodyReader = Callable[[bytes, int], tuple[Any, int]]
"""Reads one value from ``buf`` at ``pos``; returns it and the position after it."""


class BodyEndsEarly(ValueError):
    """The body is shorter than its schema says, or holds a length, index or varint out of range."""


def compile_reader(
    parsed: dict[str, Any], target: type[Any], project: Sequence[str] | None = None
) -> BodyReader | None:
    """A reader of a fastavro-parsed record schema straight into the msgspec struct ``target``.

    None when the schema uses a type the compiler does not handle or does not match the
    struct field for field (fastavro + ``msgspec.convert`` decode those).
    """
    try:
        return _ReaderBuilder(parsed.get("__named_schemas", {})).record(parsed, mi.type_info(target), project)
    except UnsupportedSchema:
        return None


# the 14 value bits of every little-endian pair of varint bytes
_PAIR_BITS = [(w & 0x7F) | (w >> 8 & 0x7F) << 7 for w in range(0x10000)]
_FOUR_PAIRS = struct.Struct("<4H").unpack_from


def read_long(buf: bytes, pos: int) -> tuple[int, int]:
    """Zigzag varint at ``pos``.

    Eight-byte varints (every microsecond timestamp) are four table lookups: about twice as
    fast as the byte loop, which int.from_bytes bit tricks did not beat for the rest.
    """
    if pos + 8 <= len(buf) and buf[pos + 2] >= 0x80:
        a, b, c, d = _FOUR_PAIRS(buf, pos)
        if a & b & c & 0x8080 == 0x8080 and d & 0x8080 == 0x80:
            n = _PAIR_BITS[a] | _PAIR_BITS[b] << 14 | _PAIR_BITS[c] << 28 | _PAIR_BITS[d] << 42
            return (n >> 1) ^ -(n & 1), pos + 8
    n = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
    if n >> 64:
        raise BodyEndsEarly(f"varint ending at byte {pos} does not fit in an Avro long")
    return (n >> 1) ^ -(n & 1), pos


def _read_string(buf: bytes, pos: int) -> tuple[str, int]:
    data, pos = _read_bytes(buf, pos)
    return data.decode(), pos


def _read_bytes(buf: bytes, pos: int) -> tuple[bytes, int]:
    size, pos = read_long(buf, pos)
    end = pos + size
    if size < 0 or end > len(buf):
        _bad_length(size, pos, buf)
    return buf[pos:end], end


def _bad_length(size: int, pos: int, buf: bytes) -> None:
    raise BodyEndsEarly(f"{size} bytes at offset {pos} run past the end ({len(buf)} bytes)")


def _block_count(buf: bytes, pos: int) -> tuple[int, int]:
    """Item count of the next array block; a negative count is followed by the block's byte size."""
    count, pos = read_long(buf, pos)
    if count < 0:
        count = -count
        _, pos = read_long(buf, pos)
    return count, pos


def _bad_index(what: str, index: int) -> Any:
    raise BodyEndsEarly(f"{what} index {index} out of range")


_READ_FIXED = {fmt: struct.Struct("<" + fmt).unpack_from for fmt in _FIXED_FORMATS.values()}
_FIXED_SIZES = {fmt: struct.calcsize(fmt) for fmt in _FIXED_FORMATS.values()}
_LEAF_TYPES: dict[str, Any] = {
    "double": mi.FloatType(),
    "float": mi.FloatType(),
    "boolean": mi.BoolType(),
    "int": mi.IntType(),
    "long": mi.IntType(),
    "string": mi.StrType(),
    "bytes": mi.BytesType(),
}


class _ReaderBuilder(_SourceBuilder):
    """Generates one Python function per record schema: primitives are read inline (the
    function-call overhead per field is most of the cost in CPython), arrays and nested
    records through helper readers, and the struct is built with keyword arguments."""

    def __init__(self, named: dict[str, Any]) -> None:
        super().__init__(
            {
                "read_long": read_long,
                "four_pairs": _FOUR_PAIRS,
                "pair_bits": _PAIR_BITS,
                "read_string": _read_string,
                "read_bytes": _read_bytes,
                "bad_index": _bad_index,
                "bad_length": _bad_length,
                "BodyEndsEarly": BodyEndsEarly,
            }
        )
        self.named = named

    def resolve(self, schema: Any) -> Any:
        if isinstance(schema, str):
            return self.named.get(schema, {"type": schema})
        if isinstance(schema, dict) and "logicalType" in schema:
            raise UnsupportedSchema(f"logical type {schema['logicalType']}")
        return schema

    def record(self, schema: dict[str, Any], info: Any, project: Sequence[str] | None = None) -> BodyReader:
        """The struct; with ``project``, the tuple of those fields instead (the others' strings
        before the last of them are skipped over, bounds-checked but not decoded)."""
        if not isinstance(info, mi.StructType) or info.array_like or info.tag_field is not None:
            raise UnsupportedSchema(f"{info} is not a plain struct")
        fields = schema["fields"]
        names = [f["name"] for f in fields]
        if names != [f.name for f in info.fields]:
            raise UnsupportedSchema(f"fields of {schema['name']} differ from {info.cls.__name__}")
        lines = ["def read(buf, pos):"]
        run: list[tuple[str, str]] = []  # (variable, struct format) of the current run of fixed-width fields
        # a projection reads no further than its last field
        read_through = len(fields) if project is None else 1 + max(names.index(name) for name in project)
        for index, (field, struct_field) in enumerate(zip(fields, info.fields, strict=True)):
            if index == read_through:
                break
            kind = _primitive_name(field["type"], self.named)
            if kind in _FIXED_FORMATS and struct_field.type == _LEAF_TYPES[kind]:
                run.append((f"v{index}", _FIXED_FORMATS[kind]))
                continue
            lines += self.fixed_run(run)
            run = []
            if project is not None and field["name"] not in project and kind in ("string", "bytes"):
                lines += ["    " + line for line in self.skip_bytes()]
            else:
                lines += self.value(f"v{index}", field["type"], struct_field.type, "    ")
        lines += self.fixed_run(run)
        if project is None:
            args = ", ".join(f"{f['name']}=v{i}" for i, f in enumerate(fields))
            lines.append(f"    return {self.constant(info.cls)}({args}), pos")
        else:
            lines.append(f"    return ({''.join(f'v{names.index(name)}, ' for name in project)}), pos")
        read: BodyReader = _define(lines, self.env)
        return read

    @staticmethod
    def skip_bytes() -> list[str]:
        return [
            "byte = buf[pos]",
            "if byte < 0x80 and not byte & 1:",
            "    pos += 1 + (byte >> 1)",
            "    if pos > len(buf): bad_length(byte >> 1, pos, buf)",
            "else: _, pos = read_bytes(buf, pos)",
        ]

    def fixed_run(self, run: list[tuple[str, str]]) -> list[str]:
        """Consecutive doubles/floats/booleans: one unpack_from (e.g. Candle's eight doubles)."""
        if not run:
            return []
        unpack = struct.Struct("<" + "".join(fmt for _, fmt in run))
        targets = "".join(f"{var}, " for var, _ in run)
        return [f"    {targets}= {self.constant(unpack.unpack_from)}(buf, pos); pos += {unpack.size}"]

    def value(self, var: str, schema: Any, info: Any, indent: str) -> list[str]:
        """Source lines that read one value of ``schema`` into ``var`` and advance ``pos``."""
        if isinstance(schema, list):
            return self.union(var, schema, info, indent)
        schema = self.resolve(schema)
        kind = schema["type"]
        if kind in _LEAF_TYPES:
            if info != _LEAF_TYPES[kind]:
                raise UnsupportedSchema(f"{kind} into {info}")
            return [indent + line for line in self.leaf(var, kind)]
        if kind == "enum":
            symbols = schema["symbols"]
            if not (
                info == mi.StrType()
                or (isinstance(info, mi.LiteralType) and set(symbols) <= set(info.values))
            ):
                raise UnsupportedSchema(f"enum {schema['name']} into {info}")
            table = self.constant(tuple(symbols))
            return [
                *(indent + line for line in self.leaf(var, "long")),
                f"{indent}{var} = {table}[{var}] if 0 <= {var} < {len(symbols)} "
                f"else bad_index('enum {schema['name']}', {var})",
            ]
        if kind == "array":
            if (
                not isinstance(info, mi.ListType)
                or info.min_length is not None
                or info.max_length is not None
            ):
                raise UnsupportedSchema(f"array into {info}")
            return [
                f"{indent}{var}, pos = {self.constant(self.array(schema['items'], info.item_type))}(buf, pos)"
            ]
        if kind == "record":
            return [f"{indent}{var}, pos = {self.constant(self.record(schema, info))}(buf, pos)"]
        raise UnsupportedSchema(f"type {kind}")

    def leaf(self, var: str, kind: str) -> list[str]:
        if kind in ("int", "long"):  # one-byte and eight-byte (timestamps) varints inline
            return [
                "byte = buf[pos]",
                f"if byte < 0x80: {var} = (byte >> 1) ^ -(byte & 1); pos += 1",
                "elif pos + 8 <= len(buf) and buf[pos + 7] < 0x80 and buf[pos + 6] >= 0x80:",
                "    a, b, c, d = four_pairs(buf, pos)",
                "    if a & b & c & 0x8080 == 0x8080:",
                "        n = pair_bits[a] | pair_bits[b] << 14 | pair_bits[c] << 28 | pair_bits[d] << 42",
                f"        {var} = (n >> 1) ^ -(n & 1); pos += 8",
                f"    else: {var}, pos = read_long(buf, pos)",
                f"else: {var}, pos = read_long(buf, pos)",
            ]
        if kind in ("string", "bytes"):  # lengths under 64 inline
            decode = ".decode()" if kind == "string" else ""
            return [
                "byte = buf[pos]",
                "if byte < 0x80 and not byte & 1:",
                "    start = pos + 1; pos = start + (byte >> 1)",
                "    if pos > len(buf): bad_length(byte >> 1, start, buf)",
                f"    {var} = buf[start:pos]{decode}",
                f"else: {var}, pos = read_{kind}(buf, pos)",
            ]
        fmt = _FIXED_FORMATS[kind]
        return [f"{var}, = {self.constant(_READ_FIXED[fmt])}(buf, pos); pos += {_FIXED_SIZES[fmt]}"]

    def union(self, var: str, branches: list[Any], info: Any, indent: str) -> list[str]:
        if len(branches) != 2 or branches.count("null") != 1 or not isinstance(info, mi.UnionType):
            raise UnsupportedSchema(f"union {branches} into {info}")
        others = [t for t in info.types if not isinstance(t, mi.NoneType)]
        if len(others) != 1 or len(info.types) != 2:
            raise UnsupportedSchema(f"union {branches} into {info}")
        null_index = branches.index("null")
        return [
            *(indent + line for line in self.leaf(var, "long")),
            f"{indent}if {var} == {null_index}: {var} = None",
            f"{indent}elif {var} == {1 - null_index}:",
            *self.value(var, branches[1 - null_index], others[0], indent + "    "),
            f"{indent}else: bad_index('union', {var})",
        ]

    def array(self, items: Any, info: Any) -> BodyReader:
        item = self.resolve(items) if not isinstance(items, list) else items
        if isinstance(item, dict) and item["type"] == "record" and isinstance(info, mi.StructType):
            fmt = _record_format(item, self.named)
            same_fields = [f["name"] for f in item["fields"]] == [f.name for f in info.fields]
            all_doubles = all(f.type == mi.FloatType() for f in info.fields) and set(fmt or "") == {"d"}
            if same_fields and all_doubles:
                return _flat_record_array_reader(len(info.fields), info.cls)
        read_item = self.item_reader(items, info)

        def read(buf: bytes, pos: int) -> tuple[list[Any], int]:
            values: list[Any] = []
            count, pos = _block_count(buf, pos)
            while count:
                for _ in range(count):
                    value, pos = read_item(buf, pos)
                    values.append(value)
                count, pos = _block_count(buf, pos)
            return values, pos

        return read

    def item_reader(self, items: Any, info: Any) -> BodyReader:
        lines = ["def read(buf, pos):", *self.value("value", items, info, "    "), "    return value, pos"]
        read: BodyReader = _define(lines, self.env)
        return read


def _flat_record_array_reader(width: int, item_type: type[Any]) -> BodyReader:
    """An array of all-double records (Level, Bucket, DepthBand): one unpack_from per block."""

    @lru_cache(maxsize=256)
    def unpack_for(count: int) -> Callable[[bytes, int], tuple[float, ...]]:
        return struct.Struct("<" + "d" * (width * count)).unpack_from

    columns = [slice(i, None, width) for i in range(width)]

    def read(buf: bytes, pos: int) -> tuple[list[Any], int]:
        values: list[Any] = []
        count, pos = _block_count(buf, pos)
        while count:
            doubles = unpack_for(count)(buf, pos)
            pos += 8 * width * count
            values += map(item_type, *[doubles[column] for column in columns])
            count, pos = _block_count(buf, pos)
        return values, pos

    return read


class _Registry:
    """Schema ids through confluent-kafka's Schema Registry client, cached both ways."""

    def __init__(self, url: str) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self._client = SchemaRegistryClient.new_client({"url": url})
        self._ids: dict[tuple[str, bytes], int] = {}
        self._by_id: dict[int, AvroSchema] = {}

    def id_for(self, subject: str, schema: AvroSchema) -> int:
        key = (subject, schema.fingerprint)
        if key not in self._ids:
            from confluent_kafka.schema_registry import Schema

            schema_id = self._client.register_schema(subject, Schema(json.dumps(schema.raw), "AVRO"))
            self._ids[key] = schema_id
            self._by_id[schema_id] = schema
        return self._ids[key]

    def schema_by_id(self, schema_id: int) -> AvroSchema:
        if schema_id not in self._by_id:
            registered = self._client.get_schema(schema_id)
            if registered.schema_str is None:
                raise DecodeError(f"schema registry has no schema text for id {schema_id}")
            self._by_id[schema_id] = AvroSchema.from_dict(json.loads(registered.schema_str))
        return self._by_id[schema_id]
