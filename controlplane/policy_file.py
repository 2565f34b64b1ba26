"""A policy file: YAML text → a ``MeshPolicy`` message, every mistake located by field path.

The schema is defined once, in ``mesh/proto/config.proto``; ``google.protobuf.json_format``
turns the YAML's mappings and lists into that message, so field names are the proto's
(``retry_budget``, or the JSON form ``retryBudget``), enums are their names (``PEAK_EWMA``) and
durations are strings (``"1.5s"``). Parsing happens in three steps, each failing with
:class:`~controlplane.validation.Problem`\\ s that name the file:

1. YAML syntax (the line and column), and duplicate keys, which plain YAML silently collapses
   to the last one (two ``clusters:`` keys would drop every cluster of the first);
2. the whole document through ``ParseDict``; when it fails, a walk of the document alongside the
   message descriptors finds *each* field at fault and names it by its path
   (``clusters[1].retry_budget.retry_ratio``) — ``json_format`` stops at the first and reports it
   in nested prose;
3. nothing more here: the rules beyond the schema are :mod:`controlplane.validation`'s.
"""

from __future__ import annotations

import re
from typing import Any, cast

import yaml
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.json_format import ParseDict, ParseError
from google.protobuf.message_factory import GetMessageClass

from controlplane.validation import Problem
from mesh.proto.config_pb2 import MeshPolicy


def parse(text: str, file: str) -> tuple[MeshPolicy, list[Problem]]:
    """The policy in ``text`` (read from ``file``), or the problems that stop it parsing.

    An empty document is the empty policy. The message returned with problems is empty.
    """
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as error:
        return MeshPolicy(), [Problem(file, "", _yaml_reason(error))]
    if data is None:
        return MeshPolicy(), []
    if not isinstance(data, dict):
        return MeshPolicy(), [Problem(file, "", f"a policy is a mapping (clusters, routes, "
                                                f"authorization, registration), not "
                                                f"{_shown(data)}")]
    policy = MeshPolicy()
    try:
        ParseDict(data, policy)
    except (ParseError, TypeError, ValueError, AttributeError) as error:
        problems = _locate(data, _POLICY, "", file)
        return MeshPolicy(), problems or [Problem(file, "", _clean(error))]
    return policy, []


# ------------------------------------------------------------------------------- YAML

class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_reason(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"YAML syntax error{where}: {problem}"


# ------------------------------------------------------------------------------- schema

_POLICY = cast(Descriptor, MeshPolicy.DESCRIPTOR)  # the stubs also allow upb's class
_GOOGLE = "google.protobuf."  # well-known types (Duration) have their own JSON forms


def _locate(data: dict[Any, Any], descriptor: Descriptor, path: str,
            file: str) -> list[Problem]:
    """Every field of ``data`` (a ``descriptor`` message at ``path``) that does not parse."""
    fields = {f.name: f for f in descriptor.fields} | {f.json_name: f for f in descriptor.fields}
    problems: list[Problem] = []
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            known = ", ".join(f.name for f in descriptor.fields)
            problems.append(Problem(file, where, f"unknown field (a {descriptor.name} has: "
                                                 f"{known})"))
        elif field.is_repeated:
            if not isinstance(value, list):
                problems.append(Problem(file, where, f"want a list, not {_shown(value)}"))
                continue
            for index, element in enumerate(value):
                problems += _value(field, element, f"{where}[{index}]", descriptor, file)
        else:
            problems += _value(field, value, where, descriptor, file)
    for oneof in descriptor.oneofs:
        given = [f.name for f in oneof.fields if f.name in data or f.json_name in data]
        if len(given) > 1:
            problems.append(Problem(file, path or descriptor.name,
                                    f"{' and '.join(given)} are alternatives ({oneof.name}): "
                                    f"give one"))
    return problems


def _value(field: FieldDescriptor, value: Any, where: str, parent: Descriptor,
           file: str) -> list[Problem]:
    """The problems of one (non-list) value of ``field``."""
    message = field.message_type
    if message is not None and not message.full_name.startswith(_GOOGLE):
        if not isinstance(value, dict):
            return [Problem(file, where, f"want a mapping (the fields of a {message.name}), "
                                         f"not {_shown(value)}")]
        return _locate(value, message, where, file)
    if field.type == FieldDescriptor.TYPE_STRING and not isinstance(value, str):
        return [Problem(file, where, f"want a string, not {_shown(value)}")]
    if field.enum_type is not None and not _is_enum_value(field, value):
        names = ", ".join(v.name for v in field.enum_type.values)
        return [Problem(file, where, f"unknown value {value!r} (want one of {names})")]
    try:
        ParseDict({field.name: [value] if field.is_repeated else value},
                  GetMessageClass(parent)())
    except (ParseError, TypeError, ValueError, AttributeError) as error:
        if message is not None and message.full_name == _GOOGLE + "Duration":
            return [Problem(file, where, f"{value!r} is not a duration: write seconds ending "
                                         f"in 's', like '1.5s' or '0.030s'")]
        return [Problem(file, where, _clean(error))]
    return []


def _is_enum_value(field: FieldDescriptor, value: Any) -> bool:
    enum = field.enum_type
    if enum is None:
        return False
    if isinstance(value, str):
        return value in enum.values_by_name
    return isinstance(value, int) and not isinstance(value, bool) and \
        value in enum.values_by_number


_NESTING = re.compile(r"^(Failed to parse \w+ field: )+")
_LOCATION = re.compile(r"\.?\s+at\s+\"?[\w.\[\]]*\"?\.*$")


def _clean(error: Exception) -> str:
    """json_format's innermost reason, without its nesting and its own location."""
    text = str(error).split("\n", 1)[0]
    return _LOCATION.sub("", _NESTING.sub("", text)).rstrip(".")


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{value!r} ({type(value).__name__})"
