"""Helpers shared by the text envs: a text space, chat messages as observations, and a
safe parser for BFCL's function-call syntax ``[f(a=1), g(b="x")]``."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import string
import warnings
from typing import Any, Iterator

import gymnasium
import numpy as np


class TextObservation(str):
    """A ``str`` that also carries the ``dtype`` of ``AnyText`` (PettingZoo's API checks
    compare an observation's dtype with its space's)."""

    dtype = np.dtype(object)


class AnyText(gymnasium.spaces.Text):
    """Any string up to ``max_length`` characters (gymnasium's ``Text`` only admits its
    charset, and model output or JSON can hold any character)."""

    def __init__(self, max_length: int):
        super().__init__(max_length=max_length, min_length=0, charset=string.printable)
        self.dtype = np.dtype(object)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length


def as_text(value: Any) -> str:
    """The text of an action or observation (``str``, numpy string or 0-d array); any
    other value (e.g. a space sample that is not text) becomes ``""``."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    return str(value) if isinstance(value, (str, np.str_)) else ""


def encode_messages(messages: list[dict[str, str]]) -> str:
    """A chat (``[{"role", "content"}, ...]``) as one observation string."""
    return json.dumps(messages, ensure_ascii=False)


# JSON with ensure_ascii=False writes a control character as \\u00XX: at most 6 characters
# for one, so a chat's encoding is at most this many times as long as its text.
JSON_EXPANSION = 6
MESSAGE_OVERHEAD = 64  # the keys and quotes of one encoded message, a name included


def chat_bound(first_chars: int, max_turns: int, chars_per_turn: int) -> int:
    """An upper bound on the length of an encoded chat (``encode_messages``) whose first
    messages hold at most ``first_chars`` characters and to which each of ``max_turns``
    turns adds at most ``chars_per_turn`` characters in at most two messages."""
    return JSON_EXPANSION * (first_chars + max_turns * chars_per_turn) + MESSAGE_OVERHEAD * (3 + 2 * max_turns)


def decode_messages(observation: Any) -> list[dict[str, str]]:
    return json.loads(as_text(observation))


@dataclasses.dataclass
class Call:
    name: str
    args: tuple
    kwargs: dict[str, Any]

    def __str__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.name}({', '.join(parts)})"


class CallSyntaxError(ValueError):
    """The text holds no well-formed, allowed call list; the message says why."""


# Integers in a call are bounded: a model's digits must not make ``repr`` fail (Python
# refuses to print integers of over 4 300 digits) or a tool compute for minutes.
MAX_ABS_INT = 10**18
# Where a call list starts: "[" then a bare name and "(", or the empty list "[]".
_CALL_LIST_START = re.compile(r"\[\s*(?:[A-Za-z_]\w*\s*\(|\])")
_CLOSING = {")": "(", "]": "[", "}": "{"}


def find_call_list(text: str) -> tuple[int, int] | None:
    """``(start, end)`` of the first call list in ``text``: from the first ``[`` that opens a
    call (``[name(``) or an empty list, to its matching ``]`` (``text[start:end]``).

    One left-to-right scan (linear in ``len(text)``) that skips string literals and
    comments. Returns None when no call list starts in ``text``.

    Raises:
        CallSyntaxError: the list starts but is never closed, or its brackets do not match.
    """
    match = _CALL_LIST_START.search(text)
    if match is None:
        return None
    stack: list[str] = []
    i, n = match.start(), len(text)
    while i < n:
        c = text[i]
        if c in "'\"":
            quote = text[i : i + 3] if text[i : i + 3] in ("'''", '"""') else c
            i += len(quote)
            while i < n and not text.startswith(quote, i):
                i += 2 if text[i] == "\\" else 1
            if i >= n:
                raise CallSyntaxError("a string in the call list is not closed")
            i += len(quote)
            continue
        if c == "#":  # a comment runs to the end of its line
            i = text.find("\n", i)
            i = n if i < 0 else i
            continue
        if c in "([{":
            stack.append(c)
        elif c in _CLOSING:
            if stack.pop() != _CLOSING[c]:
                raise CallSyntaxError(f"the call list's brackets do not match at {c!r}")
            if not stack:
                return match.start(), i + 1
        i += 1
    raise CallSyntaxError("the call list is not closed with ']'")


def snippet(source: str, node: ast.AST, limit: int = 60) -> str:
    """The source text of ``node`` (at most ``limit`` characters) for an error message;
    unlike ``ast.unparse`` it cannot recurse (deeply nested input stays an error)."""
    return repr((ast.get_source_segment(source, node) or "")[:limit])


def integers(value: Any) -> Iterator[int]:
    """Every integer in a literal value (``bool`` aside), nested containers and keys included."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from integers(k)
            yield from integers(v)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            yield from integers(v)


def literal(source: str, node: ast.AST, max_abs_int: int = MAX_ABS_INT) -> Any:
    """The value of a literal argument ``node`` parsed from ``source``.

    Only plain literals: no names, attributes, calls, comprehensions or operators, so that
    nothing in a model's output can execute code; integers within ``max_abs_int``."""
    try:
        value = ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as error:
        raise CallSyntaxError(f"arguments must be literals, got {snippet(source, node)}") from error
    if any(abs(i) > max_abs_int for i in integers(value)):
        raise CallSyntaxError(f"integers are limited to +-{max_abs_int}")
    return value


def calls_of_list(source: str, allowed: set[str] | None = None, max_abs_int: int = MAX_ABS_INT) -> list[Call]:
    """The calls of ``source``, the text of one list expression ``[f(a=1), g("x")]``.

    Every element must be a call of a bare function name (in ``allowed``, when given) with
    literal arguments (integers within ``max_abs_int``) and no repeated keyword.

    Raises:
        CallSyntaxError: with a message suitable as an observation for the model.
    """
    try:
        with warnings.catch_warnings():  # e.g. an invalid escape in a string: not our concern
            warnings.simplefilter("ignore")
            tree = ast.parse(source, mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError) as error:
        reason = error.msg if isinstance(error, SyntaxError) else "too deeply nested"
        raise CallSyntaxError(f"the call list does not parse ({reason}); answer with [func(arg=value), ...]") from None
    if not isinstance(tree, ast.List):
        raise CallSyntaxError("expected a list of function calls")
    calls = []
    for element in tree.elts:
        if not isinstance(element, ast.Call) or not isinstance(element.func, ast.Name):
            raise CallSyntaxError(f"not a function call: {snippet(source, element)}")
        name = element.func.id
        if allowed is not None and name not in allowed:
            raise CallSyntaxError(f"unknown function {name!r}; available: {', '.join(sorted(allowed))}")
        if any(isinstance(a, ast.Starred) for a in element.args) or any(k.arg is None for k in element.keywords):
            raise CallSyntaxError("*args and **kwargs are not allowed")
        kwargs: dict[str, Any] = {}
        for keyword in element.keywords:
            if keyword.arg in kwargs:
                raise CallSyntaxError(f"{name}: keyword argument {keyword.arg!r} repeated")
            kwargs[keyword.arg] = literal(source, keyword.value, max_abs_int)
        calls.append(Call(name, tuple(literal(source, a, max_abs_int) for a in element.args), kwargs))
    return calls


def parse_calls(text: str, allowed: set[str] | None = None) -> list[Call]:
    """Parse the first call list ``[f(a=1), g("x")]`` in ``text`` (see ``find_call_list``).

    Text before the list (prose, even with brackets of its own, as in ``Step [1]:``) and
    after its closing bracket is ignored: small models often add prose. The cost is linear
    in the length of ``text``.

    Raises:
        CallSyntaxError: with a message suitable as an observation for the model.
    """
    span = find_call_list(text)
    if span is None:
        raise CallSyntaxError("no function call list found; answer with [func(arg=value), ...]")
    return calls_of_list(text[span[0] : span[1]], allowed)


CUT_MARKER = "...[cut: {} more characters]"
MAX_MARKER_CHARS = 40  # the longest CUT_MARKER (any count of characters)


def cut_text(text: str, limit: int) -> str:
    """``text`` cut to its first ``limit`` characters, with a visible marker saying how many
    were cut (at most ``limit + MAX_MARKER_CHARS`` characters in all)."""
    if len(text) <= limit:
        return text
    return text[:limit] + CUT_MARKER.format(len(text) - limit)


def cap_results(results: list[str], max_result_chars: int, max_step_chars: int) -> list[str]:
    """``results`` (the tool outputs of one step, in order), each cut to ``max_result_chars``
    and all together to ``max_step_chars`` characters (``cut_text``'s markers aside): once
    the step's budget is spent, a result keeps only its marker."""
    left = max_step_chars
    out = []
    for result in results:
        keep = min(max_result_chars, left)
        out.append(cut_text(result, keep))
        left -= min(len(result), keep)
    return out
