"""Protobuf messages in their canonical JSON mapping, fast, both ways, compiled per message type:
`message_to_dict(m)` is `json_format.MessageToDict(m, always_print_fields_with_no_presence=True)`, and
`parse_message(data, cls)` is `json_format.Parse(data, cls())` (strict: unknown fields are errors).

`json_format` walks every message generically in Python (`ListFields`, then per field: map entry?
repeated? which C++ type?): about 290 µs for a three-placement DecideResponse here, more than the
decision itself. This module generates, once per message type, a function that reads each field by
name and converts it as json_format does, by json_format's own rules (lowerCamelCase `json_name`,
64-bit integers as strings, floats rounded as `type_checkers.ToShortestFloat` does, NaN and infinities
as strings, enums by name and unknown values as numbers, bytes as base64, map keys as strings, message
fields only when set, every other field always). Keys come in field-number order (json_format puts the
set fields first); the values are the same, which tests/test_json_mapping.py checks on random messages.

Message types this does not compile (well-known types such as Struct or Timestamp, wrappers, Any,
extensions, closed enums, proto2 presence) are handed to json_format itself.

Parsing takes a fast path for the plain case only: `json.loads` (with json_format's duplicate-key
check), then each known key (json name or proto name, once) with a value of exactly the JSON type
json_format would take without conversion (a string for a string field, an integer for an integer
field, a finite number for a double, objects for messages and string maps, arrays for repeated fields)
is set directly. Anything else (an unknown key, null, a number given as a string, an enum, bytes, a
float32 field, an unpaired surrogate, a value out of range, invalid JSON) goes to `json_format.Parse`
from the start, so every error, and every accepted oddity, is json_format's own.
"""

from __future__ import annotations

import base64
import json
import keyword
import math
import re
import struct
from collections.abc import Callable
from typing import Any, Final, TypeVar, cast

from google.protobuf import descriptor as _d
from google.protobuf import json_format
from google.protobuf.internal import type_checkers
from google.protobuf.message import Message

__all__ = ["compile_mappings", "message_to_dict", "parse_message"]

_Printer = Callable[[Message], dict[str, Any]]
_PRINTERS: dict[str, _Printer] = {}
_INT64: Final = frozenset((_d.FieldDescriptor.CPPTYPE_INT64, _d.FieldDescriptor.CPPTYPE_UINT64))


def message_to_dict(message: Message) -> dict[str, Any]:
    """`json_format.MessageToDict(message, always_print_fields_with_no_presence=True)`, faster."""
    return _printer(cast(_d.Descriptor, message.DESCRIPTOR))(message)


def compile_mappings(*message_classes: type[Message]) -> None:
    """Compile the printers and parsers of these message types now (else: at their first use)."""
    for cls in message_classes:
        descriptor = cast(_d.Descriptor, cls.DESCRIPTOR)
        _printer(descriptor)
        _filler(descriptor)


def _printer(descriptor: _d.Descriptor) -> _Printer:
    printer = _PRINTERS.get(descriptor.full_name)
    if printer is None:
        printer = _compile(descriptor)
        _PRINTERS[descriptor.full_name] = printer
    return printer


def _fallback(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


_FLOAT32: Final = struct.Struct("<f")
_pack, _unpack = _FLOAT32.pack, _FLOAT32.unpack


def _float(value: float) -> float | str:
    """A float field's value as json_format prints it: `type_checkers.ToShortestFloat` (the fewest
    significant digits, 6 at least, that read back as the same float32), unrolled for 6 to 8 digits."""
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "-Infinity" if value < 0 else "Infinity"
    shortest = float(f"{value:.6g}")
    if _unpack(_pack(shortest))[0] == value:
        return shortest
    shortest = float(f"{value:.7g}")
    if _unpack(_pack(shortest))[0] == value:
        return shortest
    shortest = float(f"{value:.8g}")
    if _unpack(_pack(shortest))[0] == value:
        return shortest
    return type_checkers.ToShortestFloat(value)


def _double(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    return value


def _bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("utf-8")


def _map_key(key: object) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def _compilable(descriptor: _d.Descriptor) -> bool:
    if descriptor.full_name.startswith("google.protobuf.") or descriptor.is_extendable:
        return False
    for field in descriptor.fields:
        if field.enum_type is not None and field.enum_type.is_closed:
            return False
        if field.has_presence and field.cpp_type != _d.FieldDescriptor.CPPTYPE_MESSAGE:
            return False  # proto3 `optional`, oneofs, proto2: json_format's rules (not used here)
    return True


class _Source:
    """The generated function's text and the names it refers to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, object] = {}

    def name(self, value: object, hint: str) -> str:
        key = f"_{hint}{len(self.names)}"
        self.names[key] = value
        return key


def _converter(field: _d.FieldDescriptor, source: _Source) -> str | None:
    """The name of a function converting one value of `field` (None: the value as it is)."""
    kind = field.cpp_type
    if kind == _d.FieldDescriptor.CPPTYPE_MESSAGE:
        message_type = field.message_type
        assert message_type is not None
        if message_type.full_name not in _COMPILING:  # compiled first, called directly
            return source.name(_printer(message_type), "message")

        def nested(value: Message) -> dict[str, Any]:  # a message type that contains itself
            return _printer(message_type)(value)

        return source.name(nested, "message")
    if kind == _d.FieldDescriptor.CPPTYPE_ENUM:
        assert field.enum_type is not None
        names = {v.number: v.name for v in field.enum_type.values}
        get = names.get

        def enum(value: int) -> str | int:
            return get(value, value)

        return source.name(enum, "enum")
    if field.type == _d.FieldDescriptor.TYPE_BYTES:
        return source.name(_bytes, "bytes")
    if kind == _d.FieldDescriptor.CPPTYPE_BOOL:
        return "bool"
    if kind in _INT64:
        return "str"
    if kind == _d.FieldDescriptor.CPPTYPE_FLOAT:
        return source.name(_float, "float")
    if kind == _d.FieldDescriptor.CPPTYPE_DOUBLE:
        return source.name(_double, "double")
    return None  # strings, 32-bit integers


_COMPILING: set[str] = set()  # message types whose printer is being compiled


def _compile(descriptor: _d.Descriptor) -> _Printer:
    if not _compilable(descriptor):
        return _fallback
    _COMPILING.add(descriptor.full_name)
    try:
        return _compile_printer(descriptor)
    finally:
        _COMPILING.discard(descriptor.full_name)


def _compile_printer(descriptor: _d.Descriptor) -> _Printer:
    source = _Source()
    body = ["js = {}"]
    for field in sorted(descriptor.fields, key=lambda f: f.number):
        name = field.name
        if keyword.iskeyword(name) or not name.isidentifier():
            return _fallback
        key = repr(field.json_name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_conv = source.name(_map_key, "key")
            value_conv = _converter(field.message_type.fields_by_name["value"], source)
            value = f"{value_conv}(v)" if value_conv else "v"
            body.append(f"js[{key}] = {{{key_conv}(k): {value} for k, v in m.{name}.items()}}")
        elif field.is_repeated:
            conv = _converter(field, source)
            body.append(
                f"js[{key}] = [{conv}(v) for v in m.{name}]" if conv else f"js[{key}] = list(m.{name})"
            )
        elif field.has_presence:  # a message field: printed only when set
            conv = _converter(field, source)
            body.append(f"if m.HasField({name!r}):\n        js[{key}] = {conv}(m.{name})")
        else:
            conv = _converter(field, source)
            body.append(f"js[{key}] = {conv}(m.{name})" if conv else f"js[{key}] = m.{name}")
    body.append("return js")
    text = "def printer(m):\n" + "".join(f"    {line}\n" for line in body)
    namespace: dict[str, Any] = dict(source.names)
    exec(compile(text, f"<json printer of {descriptor.full_name}>", "exec"), namespace)
    printer: _Printer = namespace["printer"]
    return printer


# --- parsing ------------------------------------------------------------------------------------------

_M = TypeVar("_M", bound=Message)
_Filler = Callable[[dict[str, Any], Message], None]
_FILLERS: dict[str, _Filler] = {}
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_INTEGERS: Final = frozenset(
    (
        _d.FieldDescriptor.CPPTYPE_INT32,
        _d.FieldDescriptor.CPPTYPE_UINT32,
        _d.FieldDescriptor.CPPTYPE_INT64,
        _d.FieldDescriptor.CPPTYPE_UINT64,
    )
)


_EXACT: Final = 2**53  # integers a double holds exactly


class _Slow(Exception):
    """Not the plain case: json_format decides."""


def parse_message(data: bytes, message_class: type[_M]) -> _M:
    """`json_format.Parse(data, message_class())`: the message, or `json_format.ParseError`."""
    try:
        js = json.loads(data, object_pairs_hook=_unique)
        if type(js) is dict:
            message = message_class()
            _filler(cast(_d.Descriptor, message.DESCRIPTOR))(js, message)
            return message
    except Exception:  # _Slow, invalid JSON, a value upb refuses: json_format says what it makes of it
        pass
    message = message_class()
    json_format.Parse(data, message)
    return message


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _Slow("duplicate key")
    return result


def _filler(descriptor: _d.Descriptor) -> _Filler:
    filler = _FILLERS.get(descriptor.full_name)
    if filler is None:
        filler = _compile_filler(descriptor)
        _FILLERS[descriptor.full_name] = filler
    return filler


def _slow_value(message: Message, value: Any) -> None:
    raise _Slow


def _plain_double(value: Any) -> bool:
    if type(value) is float:
        return math.isfinite(value)
    return type(value) is int and -_EXACT <= value <= _EXACT


def _check_scalar(field: _d.FieldDescriptor) -> Callable[[Any], bool] | None:
    """A check that a JSON value is one json_format takes as it is for `field` (None: none is)."""
    kind = field.cpp_type
    if kind == _d.FieldDescriptor.CPPTYPE_STRING and field.type != _d.FieldDescriptor.TYPE_BYTES:
        return lambda v: type(v) is str and (v.isascii() or not _SURROGATE.search(v))
    if kind in _INTEGERS:
        return lambda v: type(v) is int
    if kind == _d.FieldDescriptor.CPPTYPE_BOOL:
        return lambda v: type(v) is bool
    if kind == _d.FieldDescriptor.CPPTYPE_DOUBLE:
        return lambda v: (
            (type(v) is float and math.isfinite(v)) or (type(v) is int and -_EXACT <= v <= _EXACT)
        )
    return None  # enums, bytes, float32: json_format


def _setter(field: _d.FieldDescriptor) -> Callable[[Message, Any], None]:
    name = field.name
    value_type = field.message_type
    if field.containing_oneof is not None or (field.has_presence and value_type is None):
        return _slow_value
    if value_type is not None and value_type.GetOptions().map_entry:
        key_field, value_field = value_type.fields_by_name["key"], value_type.fields_by_name["value"]
        value_ok = _check_scalar(value_field)
        if value_ok is None or key_field.cpp_type != _d.FieldDescriptor.CPPTYPE_STRING:
            return _slow_value
        key_ok = _check_scalar(key_field)
        assert key_ok is not None

        def set_map(message: Message, value: Any) -> None:
            if type(value) is not dict or not all(key_ok(k) and value_ok(v) for k, v in value.items()):
                raise _Slow
            getattr(message, name).update(value)

        return set_map
    if value_type is not None:

        def fill(value: Any, target: Message) -> None:
            if type(value) is not dict:
                raise _Slow
            _filler(value_type)(value, target)

        if field.is_repeated:

            def set_messages(message: Message, value: Any) -> None:
                if type(value) is not list:
                    raise _Slow
                container = getattr(message, name)
                for item in value:
                    fill(item, container.add())

            return set_messages

        def set_message(message: Message, value: Any) -> None:
            target = getattr(message, name)
            target.SetInParent()
            fill(value, target)

        return set_message
    ok = _check_scalar(field)
    if ok is None:
        return _slow_value
    if field.is_repeated:

        def set_list(message: Message, value: Any) -> None:
            if type(value) is not list or not all(ok(v) for v in value):
                raise _Slow
            getattr(message, name).extend(value)

        return set_list

    def set_scalar(message: Message, value: Any) -> None:
        if not ok(value):
            raise _Slow
        setattr(message, name, value)

    return set_scalar


def _compilable_for_parse(descriptor: _d.Descriptor) -> bool:
    return not (descriptor.full_name.startswith("google.protobuf.") or descriptor.is_extendable)


def _compile_filler(descriptor: _d.Descriptor) -> _Filler:
    """Sets the fields of one JSON object on a message: the json name or the proto name of a field,
    each field at most once (json_format takes both names of one field, the last winning: json_format
    decides that case too)."""
    if not _compilable_for_parse(descriptor):

        def slow(js: dict[str, Any], message: Message) -> None:
            raise _Slow

        return slow
    setters: dict[str, tuple[str, Callable[[Message, Any], None]]] = {}
    for field in descriptor.fields:
        setter = _setter(field)
        setters[field.json_name] = (field.name, setter)
        setters[field.name] = (field.name, setter)

    def fill(js: dict[str, Any], message: Message) -> None:
        if len(js) > 1:
            names = [setters[key][0] if key in setters else key for key in js]
            if len(set(names)) != len(names):
                raise _Slow  # one field under both its names
        for key, value in js.items():
            entry = setters.get(key)
            if entry is None or value is None:
                raise _Slow
            entry[1](message, value)

    return fill
