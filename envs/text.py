"""Helpers shared by the text envs: a text space, chat messages as observations, and a
safe parser for BFCL's function-call syntax ``[f(a=1), g(b="x")]``."""

from __future__ import annotations

import ast
import dataclasses
import json
import string
from typing import Any

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


def _literal(node: ast.AST) -> Any:
    # Only plain literals: no names, attributes, calls, comprehensions or operators, so
    # that nothing in a model's output can execute code.
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as error:
        raise CallSyntaxError(f"arguments must be literals, got {ast.unparse(node)[:60]!r}") from error


def parse_calls(text: str, allowed: set[str] | None = None) -> list[Call]:
    """Parse the first complete ``[f(a=1), g("x")]`` list in ``text``.

    Text before the list and after its closing bracket is ignored (small models often add
    prose). Every element must be a call of a bare function name (in ``allowed``, when
    given) with literal arguments.

    Raises:
        CallSyntaxError: with a message suitable as an observation for the model.
    """
    start = text.find("[")
    if start < 0:
        raise CallSyntaxError("no function call list found; answer with [func(arg=value), ...]")
    tree = None
    end = start
    while tree is None:
        end = text.find("]", end + 1)
        if end < 0:
            raise CallSyntaxError("the call list is not closed with ']' or does not parse")
        try:
            tree = ast.parse(text[start : end + 1], mode="eval")
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            tree = None
    if not isinstance(tree.body, ast.List):
        raise CallSyntaxError("expected a list of function calls")
    calls = []
    for element in tree.body.elts:
        if not isinstance(element, ast.Call) or not isinstance(element.func, ast.Name):
            raise CallSyntaxError(f"not a function call: {ast.unparse(element)[:60]!r}")
        name = element.func.id
        if allowed is not None and name not in allowed:
            raise CallSyntaxError(f"unknown function {name!r}; available: {', '.join(sorted(allowed))}")
        if any(k.arg is None for k in element.keywords):
            raise CallSyntaxError("**kwargs are not allowed")
        args = tuple(_literal(a) for a in element.args)
        kwargs = {k.arg: _literal(k.value) for k in element.keywords}
        calls.append(Call(name, args, kwargs))
    return calls
