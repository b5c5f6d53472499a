"""Control messages on the wire: parse what a peer sent, safely; dump what we send.

A control message is one JSON object with a string ``"t"`` (its type), sent as one
text message on the control data channel. :func:`parse_control` turns what arrived
into a ``dict`` or raises :class:`WireError`, and nothing else, for any input: a
peer must not be able to kill the link (or the engine loop) with an exception from
the parser. It refuses, in this order:

* input that is not ``str`` or ``bytes``;
* more than ``max_bytes`` (64 KiB) of UTF-8;
* bytes that are not UTF-8, or a ``str`` holding a raw lone surrogate (it could not
  have come off the wire as UTF-8);
* brackets nested deeper than ``max_depth`` (16). ``json.loads`` recurses once per
  level, so 1,000 ``[`` in 2 KB raised ``RecursionError``. The depth is measured
  first by a linear scan that skips string contents, so the parser never runs on
  deep input;
* text that is not JSON, ``NaN``/``Infinity``/``-Infinity``, numbers that overflow
  to infinity (``1e999``), integers of more than :data:`MAX_INT_CHARS` characters
  (``int()`` is slow on huge literals), duplicate keys in an object (two parsers
  could disagree on which one counts);
* a top level that is not an object, and a ``"t"`` that is missing or not a string.

Strings inside are *not* cleaned: JSON escapes such as ``"\\ud800"`` are legal JSON
and pass through as lone surrogates. Whoever stores, logs or shows a string cleans
it first with :mod:`ivisit_nb.protocol.text`.

:func:`dump_control` writes compact JSON (``","`` and ``":"`` separators) with
``ensure_ascii=False``: the channel carries UTF-8, so a non-ASCII name costs 1-4
bytes instead of a 6-12 byte escape, and the 64 KiB limit counts UTF-8 bytes. Raw
surrogates in our own strings would make that text unencodable, so they are fixed
(pairs joined, lone ones replaced by U+FFFD); the output never holds a surrogate,
raw or escaped. What it writes, :func:`parse_control` accepts.

Why stdlib ``json`` and not ``msgspec``: messages are small (at most 64 KiB) and
few, so the C scanner of ``json`` is fast enough; the depth limit is one linear
pre-scan; and msgspec, a compiled extra dependency, would still need the same checks
for ``"t"``, surrogates and limits. Sans I/O and self-contained: stdlib only.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: The largest control message, in bytes of UTF-8 (the room server's limit too).
MAX_CONTROL_BYTES = 65536
#: The deepest nesting of arrays and objects accepted.
MAX_DEPTH = 16
#: The longest integer literal accepted, sign included (2**63 has 19 digits).
MAX_INT_CHARS = 64

# A whole JSON string literal, or one bracket. A literal is skipped as one match, so
# brackets inside strings are not counted. An unterminated literal runs to the end of
# the text: the scan always matches at a quote, so it stays linear (a literal that had
# to end in a quote made '"\\"\\"\\"...' quadratic).
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)


class WireError(ValueError):
    """A control message was refused; ``reason`` (also the message) says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def nesting_depth(text: str, limit: int | None = None) -> int:
    """The deepest nesting of ``[`` and ``{`` in JSON ``text``, not counting string contents.

    Linear and non-recursive. For text that is valid JSON it is the exact depth;
    for any text, the JSON parser never goes deeper than this before it fails.
    Stops early, returning ``limit + 1``, once the depth passes ``limit``.
    Raises :class:`WireError` at a closing bracket with nothing open.
    """
    depth = deepest = 0
    for m in _TOKENS.finditer(text):
        c = m.group()
        if c == "[" or c == "{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if limit is not None and deepest > limit:
                    return deepest
        elif c == "]" or c == "}":
            depth -= 1
            if depth < 0:
                raise WireError(f"not JSON: '{c}' with nothing open at char {m.start()}")
    return deepest


def _refuse_constant(name: str) -> Any:
    raise WireError(f"{name} is not allowed in a control message")


def _parse_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise WireError(f"the number {literal[:40]} is too large")
    return value


def _parse_int(literal: str) -> int:
    if len(literal) > MAX_INT_CHARS:
        raise WireError(f"an integer of {len(literal)} characters; at most {MAX_INT_CHARS} are allowed")
    return int(literal)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise WireError(f"duplicate key {key[:40]!r} in an object")
        obj[key] = value
    return obj


def _fix_surrogates(value: Any) -> Any:
    """A copy of a checked JSON value with raw surrogates fixed in every string and key."""
    if isinstance(value, str):
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if isinstance(value, dict):
        return _object([(_fix_surrogates(k), _fix_surrogates(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return [_fix_surrogates(v) for v in value]
    return value


def parse_control(text: str | bytes, *, max_bytes: int = MAX_CONTROL_BYTES, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The JSON object in ``text``, with a string ``"t"``, or raise :class:`WireError`.

    See the module docstring for what is refused. Never raises anything else.
    """
    if isinstance(text, (bytes, bytearray, memoryview)):
        data = bytes(text)
        if len(data) > max_bytes:
            raise WireError(f"the message is {len(data)} bytes long; at most {max_bytes} are allowed")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError(f"the message is not UTF-8: {exc.reason} at byte {exc.start}") from None
    elif isinstance(text, str):
        if len(text) > max_bytes:  # every character is at least one byte
            raise WireError(f"the message is over {max_bytes} bytes long; at most {max_bytes} are allowed")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise WireError(f"the message is not valid text: a lone surrogate at char {exc.start}") from None
        if size > max_bytes:
            raise WireError(f"the message is {size} bytes long; at most {max_bytes} are allowed")
    else:
        raise WireError(f"a control message must be text or bytes, not {type(text).__name__}")

    if nesting_depth(text, max_depth) > max_depth:
        raise WireError(f"the message nests more than {max_depth} levels deep; at most {max_depth} are allowed")
    try:
        msg = json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_parse_float,
            parse_int=_parse_int,
            object_pairs_hook=_object,
        )
    except WireError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise WireError(f"not JSON: {exc}"[:200]) from None

    if not isinstance(msg, dict):
        raise WireError(f"a control message must be a JSON object, not {type(msg).__name__}")
    if "t" not in msg:
        raise WireError('a control message needs a "t" (its type)')
    if not isinstance(msg["t"], str):
        raise WireError(f'a control message\'s "t" must be a string, not {type(msg["t"]).__name__}')
    return msg


def _check_value(value: Any, depth: int, max_depth: int) -> None:
    """Refuse what JSON cannot carry faithfully or :func:`parse_control` would refuse."""
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if len(str(value)) > MAX_INT_CHARS:
            raise WireError(f"an integer of more than {MAX_INT_CHARS} digits")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise WireError(f"{value} cannot be sent in JSON")
        return
    if isinstance(value, (dict, list, tuple)):
        if depth >= max_depth:
            raise WireError(f"the message nests deeper than {max_depth} levels")
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise WireError(f"object keys must be strings, not {type(k).__name__}")
                _check_value(v, depth + 1, max_depth)
        else:
            for v in value:
                _check_value(v, depth + 1, max_depth)
        return
    raise WireError(f"{type(value).__name__} cannot be sent in JSON")


def dump_control(msg: dict[str, Any], *, max_bytes: int = MAX_CONTROL_BYTES, max_depth: int = MAX_DEPTH) -> str:
    """``msg`` as compact JSON text for the control channel.

    ``msg`` must be a dict with a string ``"t"`` holding only dicts with string keys,
    lists, tuples, strings, finite floats, ints, booleans and ``None``, at most
    ``max_depth`` deep; the result must fit in ``max_bytes`` of UTF-8. Otherwise
    :class:`WireError` (a bug on our side). Surrogates in strings are fixed (see the
    module docstring), so the output always encodes to UTF-8.
    """
    if not isinstance(msg, dict):
        raise WireError(f"a control message must be a dict, not {type(msg).__name__}")
    if not isinstance(msg.get("t"), str):
        raise WireError('a control message needs a string "t"')
    _check_value(msg, 0, max_depth)
    text = json.dumps(msg, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # rare: fix every string, then dump again
        text = json.dumps(_fix_surrogates(msg), ensure_ascii=False, separators=(",", ":"))
        size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise WireError(f"the message would be {size} bytes long; at most {max_bytes} are allowed")
    return text
