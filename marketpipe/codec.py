"""Avro codec for every record that crosses Kafka.

Two wire encodings, chosen by configuration and both accepted when decoding:

* Avro single-object encoding (default, no registry): ``C3 01`` + the 8-byte
  little-endian CRC-64-AVRO fingerprint of the writer schema + the Avro body.
  Decodable from the ``.avsc`` files alone.
* Confluent wire format (when ``SCHEMA_REGISTRY_URL`` is set): ``00`` + the 4-byte
  big-endian schema id + the Avro body; schemas are registered under
  ``<topic>-value`` (TopicNameStrategy).

Decoding resolves the writer schema against the current reader schema, so records
written by an older, backward-compatible schema version decode into today's types.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import fastavro
import msgspec
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint, to_parsing_canonical_form

from marketpipe.records import RECORD_TYPES, Record
from schemas import SCHEMA_DIR

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
    def __init__(self, schema_registry_url: str | None = None, schema_dir: Path = SCHEMA_DIR) -> None:
        self._schemas = load_schemas(schema_dir)
        self._type_by_name = {self._schemas[rt.schema_name].name: rt for rt in RECORD_TYPES}
        # writer schemas this codec can decode, by fingerprint (current + registered older versions)
        self._writers: dict[bytes, AvroSchema] = {s.fingerprint: s for s in self._schemas.values()}
        self._registry = _Registry(schema_registry_url) if schema_registry_url else None

    @property
    def uses_registry(self) -> bool:
        return self._registry is not None

    def schema_for(self, record_type: type[Record]) -> AvroSchema:
        return self._schemas[record_type.schema_name]

    def add_writer_schema(self, raw: dict[str, Any]) -> AvroSchema:
        """Make an older (or newer) version of a schema decodable by fingerprint."""
        schema = AvroSchema.from_dict(raw)
        self._writers[schema.fingerprint] = schema
        return schema

    # -- encoding ---------------------------------------------------------------------

    def encode(self, record: Record, topic: str | None = None) -> bytes:
        schema = self._schemas[record.schema_name]
        body = _write(schema, msgspec.to_builtins(record, builtin_types=(bytes,)))
        if self._registry is None:
            return SINGLE_OBJECT_MAGIC + schema.fingerprint + body
        if topic is None:
            raise ValueError("the Confluent wire format needs the topic name to pick the subject")
        schema_id = self._registry.id_for(f"{topic}-value", schema)
        return CONFLUENT_MAGIC + struct.pack(">I", schema_id) + body

    def encode_with(self, raw_schema: dict[str, Any], value: dict[str, Any]) -> bytes:
        """Single-object encoding with an explicit writer schema (schema-evolution tests, tools)."""
        schema = AvroSchema.from_dict(raw_schema)
        return SINGLE_OBJECT_MAGIC + schema.fingerprint + _write(schema, value)

    # -- decoding ---------------------------------------------------------------------

    def decode(self, data: bytes, record_type: type[R] | None = None) -> R:
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

    def _writer_of(self, data: bytes) -> tuple[AvroSchema, bytes]:
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


def _write(schema: AvroSchema, value: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema.parsed, value)
    return out.getvalue()


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
