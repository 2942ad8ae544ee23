"""One validation error in the bridge's own words: a field path and a short message.

pydantic reports every error with a `loc` and a `type`; the bridge answers with the first one as
`<path>: <message>` (e.g. `lesson.id: is required`), the wording its clients have always seen.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic_core import ErrorDetails

OBJECT_ERRORS = frozenset({"model_type", "model_attributes_type", "dict_type"})


def path_of(loc: Sequence[str | int]) -> str:
    """`("lesson", "id")` → `lesson.id`; list positions as `[3]`."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f"{'.' if path else ''}{part}"
    return path


def message_of(error: ErrorDetails) -> str:
    kind, value = error["type"], error["input"]
    if kind == "missing":
        return "is required"
    if kind == "string_type":
        return f"must be a string, got {type(value).__name__}"
    if kind == "string_too_long":
        return f"is longer than {error.get('ctx', {}).get('max_length')} characters"
    if kind in OBJECT_ERRORS:
        return f"must be an object, got {type(value).__name__}"
    if kind == "bool_type":
        return "must be true or false"
    return error["msg"]      # the bridge's own PydanticCustomError texts, and pydantic's for the rest
