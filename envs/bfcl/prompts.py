"""System prompts and function docs.

``doc_format``:
    ``"json"``: BFCL's default prompt, built by bfcl's own
        ``system_prompt_pre_processing_chat_model`` (docs as JSON indented by 4).
    ``"python"``, ``"xml"``: bfcl's other doc formats (its format-sensitivity variants).
    ``"compact"``: the same BFCL instructions with compact docs: one signature line per
        function (``name(param: type, opt: type = default) -> {field: type}``), its
        description, one line per parameter (description, enum values, nested fields); the
        text every function of a class repeats ("This tool belongs to ...") and bfcl's
        "Python 3 syntax" note are said once. Only the descriptions of the *returned*
        fields are left out (their names and types stay; the results arrive anyway).
"""

from __future__ import annotations

from typing import Any

from envs.bfcl.backend import bfcl

DOC_FORMATS = ("json", "python", "xml", "compact")
_CLASS_MARKER = "Tool description: "
_PYTHON_NOTE = " Note that the provided function is in Python 3 syntax."
_TYPES = {"string": "str", "integer": "int", "float": "float", "number": "float", "boolean": "bool", "array": "list", "dict": "dict", "object": "dict"}


def first_messages(question: list[dict], functions: list[dict], entry_id: str, doc_format: str) -> list[dict]:
    """The first user turn's messages with the system prompt in front (merged into an
    existing system message as bfcl does)."""
    b = bfcl()
    messages = [dict(m) for m in question]
    if doc_format == "json":
        return b.handler.system_prompt_pre_processing_chat_model(messages, functions, entry_id)
    prompt = system_prompt(functions, doc_format)
    if messages and messages[0]["role"] == "system":
        messages[0]["content"] = prompt + "\n\n" + messages[0]["content"]
        return messages
    return [{"role": "system", "content": prompt}, *messages]


def system_prompt(functions: list[dict], doc_format: str) -> str:
    """BFCL's default system prompt with the function docs in ``doc_format``."""
    b = bfcl()
    if doc_format not in DOC_FORMATS:
        raise ValueError(f"bfcl doc_format must be one of {DOC_FORMATS}, got {doc_format!r}")
    default = b.prompts.DEFAULT_SYSTEM_PROMPT_FORMAT
    if doc_format != "compact":
        return b.handler.formulate_system_prompt(default.replace("func_doc_fmt=json", f"func_doc_fmt={doc_format}"), functions)
    # formulate_system_prompt's own steps, with our docs in place of format_function_doc's.
    return_format, tag, _, prompt_format, style = b.handler.parse_prompt_variation_params(default)
    s = b.prompts.PROMPT_STYLE_TEMPLATES[style]
    call_format = s["tool_call_with_tag" if tag else "tool_call_no_tag"].format(
        output_format=b.prompts.OUTPUT_FORMAT_MAPPING[return_format], param_types=b.prompts.PARAM_TYPE_MAPPING[return_format]
    )
    return b.prompts.PROMPT_TEMPLATE_MAPPING[prompt_format].format(
        persona=s["persona"],
        task=s["task"],
        tool_call_format=call_format,
        multiturn_behavior=s["multiturn_behavior"],
        available_tools=s["available_tools"].format(format="compact", functions=compact_docs(functions)),
    )


def held_out_message(functions: list[dict], doc_format: str) -> dict[str, str]:
    """The user message that hands over held-out functions (miss_func), as bfcl's
    prompting handlers write it, with the docs in ``doc_format``."""
    b = bfcl()
    if doc_format == "json":
        docs: Any = functions  # bfcl formats the list of dicts as is
    elif doc_format == "compact":
        docs = compact_docs(functions)
    else:
        docs = b.handler.format_function_doc(functions, doc_format)
    return {"role": "user", "content": b.prompts.DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_PROMPTING.format(functions=docs)}


def _type(meta: dict) -> str:
    name = _TYPES.get(meta.get("type", "any"), meta.get("type", "any"))
    if "items" in meta:
        name = f"{name}[{_type(meta['items'])}]"
    return name


def _fields(schema: dict) -> str:
    return "{" + ", ".join(f"{k}: {_type(v)}" for k, v in schema.get("properties", {}).items()) + "}"


def _parameter_lines(properties: dict, indent: str) -> list[str]:
    lines = []
    for name, meta in properties.items():
        text = meta.get("description", "").strip()
        if "enum" in meta:
            text += f" One of: {', '.join(map(repr, meta['enum']))}."
        lines.append(f"{indent}{name}: {text}")
        nested = meta.get("properties") or meta.get("items", {}).get("properties")
        if nested:
            lines.extend(f"{indent}  {k} ({_type(v)}): {v.get('description', '').strip()}" for k, v in nested.items())
    return lines


def compact_docs(functions: list[dict]) -> str:
    """Function docs in the compact format (see the module docstring)."""
    python_note = bool(functions) and all(f.get("description", "").endswith(_PYTHON_NOTE) for f in functions)
    lines = ["All functions are in Python 3 syntax."] if python_note else []
    header = None
    for f in functions:
        description = f.get("description", "")
        if python_note:
            description = description[: -len(_PYTHON_NOTE)]
        group, marker, own = description.partition(_CLASS_MARKER)
        if not marker:
            group, own = "", description
        if group.strip() and group != header:
            lines.append(f"# {group.strip()}")
        header = group if group.strip() else header
        params = f.get("parameters", {})
        required = set(params.get("required", []))
        signature = []
        for name, meta in params.get("properties", {}).items():
            part = f"{name}: {_type(meta)}"
            if "default" in meta:
                part += f" = {meta['default']!r}"
            elif name not in required:
                part += " = None"
            signature.append(part)
        returns = f" -> {_fields(f['response'])}" if f.get("response", {}).get("properties") else ""
        lines.append(f"{f['name']}({', '.join(signature)}){returns}")
        lines.append(f"  {own.strip()}")
        lines.extend(_parameter_lines(params.get("properties", {}), "  "))
    return "\n".join(lines)
