"""The msgspec records and the .avsc files describe the same records, field for field."""

from __future__ import annotations

import json
import types
import typing

import msgspec
import pytest

from marketpipe.records import RECORD_TYPES, Record
from schemas import SCHEMA_DIR

AVRO_PRIMITIVE = {
    int: {"long", "int"},
    float: {"double"},
    str: {"string"},
    bool: {"boolean"},
    bytes: {"bytes"},
}


def _avro_kind(avro_type: object) -> str:
    if isinstance(avro_type, list):
        return "union"
    if isinstance(avro_type, dict):
        return str(avro_type["type"])
    return str(avro_type)


@pytest.mark.parametrize("record_type", RECORD_TYPES, ids=lambda t: t.__name__)
def test_record_fields_mirror_avro_schema(record_type: type[Record]) -> None:
    schema = json.loads((SCHEMA_DIR / f"{record_type.schema_name}.avsc").read_text())
    avro_fields = {f["name"]: f for f in schema["fields"]}
    struct_fields = {f.name: f for f in msgspec.structs.fields(record_type)}
    assert list(avro_fields) == [f.name for f in msgspec.structs.fields(record_type)]
    hints = typing.get_type_hints(record_type)
    for name, avro_field in avro_fields.items():
        hint = hints[name]
        kind = _avro_kind(avro_field["type"])
        # `Literal[...] | None` is a typing.Union, `str | None` a types.UnionType
        union = typing.get_origin(hint) in (types.UnionType, typing.Union)
        optional = union and type(None) in typing.get_args(hint)
        assert optional == (kind == "union"), f"{name}: optionality differs"
        has_default = struct_fields[name].default is not msgspec.NODEFAULT or (
            struct_fields[name].default_factory is not msgspec.NODEFAULT
        )
        assert has_default == ("default" in avro_field), f"{name}: default differs"
        if hint in AVRO_PRIMITIVE:
            assert kind in AVRO_PRIMITIVE[hint], f"{name}: {hint} vs {kind}"
        elif typing.get_origin(hint) is list:
            assert kind == "array", name
        elif typing.get_origin(hint) is typing.Literal:
            assert kind == "enum", name
            assert list(typing.get_args(hint)) == avro_field["type"]["symbols"], name
        elif optional and typing.get_origin(typing.get_args(hint)[0]) is typing.Literal:
            (enum,) = [t for t in avro_field["type"] if isinstance(t, dict)]
            assert list(typing.get_args(typing.get_args(hint)[0])) == enum["symbols"], name


def test_every_schema_file_has_a_record_type() -> None:
    names = {path.stem for path in SCHEMA_DIR.glob("*.avsc")}
    assert names == {t.schema_name for t in RECORD_TYPES}
