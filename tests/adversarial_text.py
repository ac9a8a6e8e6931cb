"""Hypothesis strategies for what a hostile or broken model may write: call-list syntax
taken apart and put together wrong, code that must never run, huge or deeply nested
literals, control characters and very long texts."""

from hypothesis import strategies as st

NAMES = ("get_stock", "add_item", "remove_item", "finish", "cd", "ls", "mkdir", "get_transaction_history", "f", "__import__", "open", "eval")
FRAGMENTS = (
    "[", "]", "(", ")", "{", "}", ",", "=", ":", ".", "*", "**", "-", "+", "'", '"', '"""', "\\", "#", "\n", " ",
    "lambda x: x", "__import__('os').system('touch pwned')", "open('pwned.txt', 'w')", "[x for x in ()]",
    "f'{1}'", "...", "None", "True", "1e999", "-1", "0x" + "f" * 40, "9" * 30, "1j", "b'\\x00'", "{1, 2}",
    "{'a': [1, {2: 3}]}", "item=", "qty=", "folder=", "answer=", "<think>", "</think>", "```python\n", "```",
    "Step [1]: ", "Sure! ", "\x00", "\u202e", "é",
)


@st.composite
def call_text(draw):
    """Text built from call-list pieces, names and literals, in any order."""
    pieces = draw(st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.sampled_from(NAMES), st.text(max_size=8)), max_size=40))
    return "".join(pieces)


@st.composite
def nested_text(draw):
    """A call whose argument nests one pattern hundreds to thousands of times."""
    name = draw(st.sampled_from(NAMES))
    key = draw(st.sampled_from(("item=", "folder=", "qty=", "")))
    opening, closing = draw(st.sampled_from((("-", ""), ("[", "]"), ("(", ")"), ("{1: ", "}"), ("not ", ""), ("1+", ""))))
    depth = draw(st.integers(100, 3000))
    return f"[{name}({key}{opening * depth}1{closing * depth})]"


@st.composite
def well_formed_calls(draw):
    """Call lists that parse, with arguments of every literal type and arity."""
    literal = st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
        lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)),
        max_leaves=8,
    )
    calls = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(NAMES))
        args = [repr(v) for v in draw(st.lists(literal, max_size=3))]
        kwargs = [f"{k}={v!r}" for k, v in draw(st.dictionaries(st.sampled_from(("item", "qty", "answer", "folder", "x")), literal, max_size=3)).items()]
        calls.append(f"{name}({', '.join(args + kwargs)})")
    prose = draw(st.sampled_from(("", "Sure: ", "Step [1]: ", "```python\n")))
    return prose + "[" + ", ".join(calls) + "]" + draw(st.sampled_from(("", " done", "]", "\n```")))


# Any of the above, or any text at all (long runs of one character included).
MODEL_OUTPUT = st.one_of(
    call_text(),
    nested_text(),
    well_formed_calls(),
    st.text(max_size=200),
    st.builds(lambda c, n: c * n, st.sampled_from(("[", "]", "(", "[f(", "'", "\\", "-", "a")), st.integers(1000, 9000)),
)
