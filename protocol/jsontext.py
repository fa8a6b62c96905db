"""JSON text from clients, parsed so that no input can raise anything but a JSONDecodeError."""

from __future__ import annotations

import json
from typing import Any


def loads(text: str | bytes) -> Any:
    """`json.loads`, with nesting past the interpreter's recursion limit reported as a JSONDecodeError.

    CPython's decoder recurses once per `[` or `{`: a body of 100,000 `[` would otherwise escape
    as a RecursionError, and a client could turn a bad body into a 500.
    """
    try:
        return json.loads(text)
    except RecursionError:
        doc = text if isinstance(text, str) else ""
        raise json.JSONDecodeError("nested too deeply", doc, 0) from None
