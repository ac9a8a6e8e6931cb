"""Everything that touches ``bfcl_eval``: the lazy import, the data, the split, the safe
decoding of model output, execution through BFCL's own executor, the official checker, and
the clean-up of BFCL's per-instance globals.

``bfcl_eval`` is imported on first use only (``import rllib_seeupo`` works without it), and
``BFCL_PROJECT_ROOT`` is set before that import: importing its constants creates folders
there (by default inside site-packages).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import decimal
import functools
import hashlib
import importlib
import inspect
import json
import os
import re
import types
import warnings
from pathlib import Path
from typing import Any

from envs.text import Call, CallSyntaxError, calls_of_list, find_call_list

CATEGORIES = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")
# The backend classes of the four multi-turn categories.
CLASSES = (
    "GorillaFileSystem", "MathAPI", "MessageAPI", "TicketAPI", "TradingBot", "TravelAPI", "TwitterAPI", "VehicleControlAPI",
)
ENTRIES_PER_CATEGORY = 200
INSTALL_HINT = (
    "pip install --no-deps bfcl-eval==2026.3.23 && pip install filelock==3.20.0 tree_sitter==0.21.3 "
    "tree-sitter-java==0.21.0 tree-sitter-javascript==0.21.4 tenacity mpmath==1.3.0"
)
SPLIT_SALT = "bfcl-v4-multi-turn"
# Arguments that make a backend compute for minutes (mpmath / decimal precision, integer
# powers): a model's random digits must not stall a rollout worker. BFCL's ground truth
# stays far below these (largest integer 987 654, largest precision 10).
MAX_ABS_INT = 10**9
PARAMETER_LIMITS = {"precision": 1000, "exponent": 1000}


def default_project_root() -> Path:
    """``$RLLIB_SEEUPO_CACHE/bfcl`` (default ``~/.cache/rllib_seeupo/bfcl``)."""
    root = os.environ.get("RLLIB_SEEUPO_CACHE") or Path.home() / ".cache" / "rllib_seeupo"
    return Path(root) / "bfcl"


@functools.cache
def bfcl() -> types.SimpleNamespace:
    """The ``bfcl_eval`` functions this env uses, imported on first call.

    ``BFCL_PROJECT_ROOT`` defaults to :func:`default_project_root` (an existing value is kept).

    Raises:
        ImportError: naming the install command when ``bfcl-eval`` is missing.
    """
    os.environ.setdefault("BFCL_PROJECT_ROOT", str(default_project_root()))
    Path(os.environ["BFCL_PROJECT_ROOT"]).mkdir(parents=True, exist_ok=True)
    try:
        from bfcl_eval.constants import default_prompts
        from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING
        from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_checker, multi_turn_utils
        from bfcl_eval.model_handler import utils as handler_utils
        from bfcl_eval import utils as data_utils
    except ImportError as error:
        raise ImportError(f"the BFCL env needs the bfcl-eval package (offline, minimal install): {INSTALL_HINT}") from error
    # Backends are imported by the executor on first use; importing them now keeps
    # sys.modules constant while episodes run.
    backends = {name: getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[name]), name) for name in CLASSES}
    return types.SimpleNamespace(
        prompts=default_prompts,
        checker=multi_turn_checker,
        executor=multi_turn_utils,
        handler=handler_utils,
        data=data_utils,
        backends=backends,
    )


# -- data ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
    """One BFCL multi-turn entry and its ground truth (shared, never mutated)."""

    id: str
    category: str
    number: int  # N of "<category>_N": the scenario, shared by the four categories
    entry: dict  # BFCL's test entry (question, initial_config, involved_classes, function, ...)
    ground_truth: list  # per user turn, the list of call strings

    @property
    def missed_functions(self) -> dict[int, list[dict]]:
        """User turn -> function docs held out until that turn (miss_func only)."""
        return {int(k): v for k, v in self.entry.get("missed_function", {}).items()}


def _category_of(entry_id: str) -> str:
    category, _, number = entry_id.rpartition("_")
    if category not in CATEGORIES or not number.isdigit() or int(number) >= ENTRIES_PER_CATEGORY:
        raise ValueError(f"not a BFCL multi-turn entry id: {entry_id!r}; expected '<category>_<N>' with category in {CATEGORIES}")
    return category


@functools.cache
def load_category(category: str) -> dict[str, Entry]:
    """Entry id -> ``Entry`` for one category (read once per process through bfcl's loaders)."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown BFCL multi-turn category {category!r}; known: {CATEGORIES}")
    b = bfcl()
    truths = {g["id"]: g["ground_truth"] for g in b.data.load_ground_truth_entry(category)}
    entries = {}
    shared_docs: dict[str, dict] = {}
    for raw in b.data.load_dataset_entry(category):
        # Every entry carries its own copy of its classes' docs; one shared copy per doc
        # keeps 800 entries at a few MB.
        raw["function"] = [shared_docs.setdefault(_doc_key(d), d) for d in raw["function"]]
        number = int(raw["id"].rpartition("_")[2])
        entries[raw["id"]] = Entry(raw["id"], category, number, raw, truths[raw["id"]])
    return entries


def _doc_key(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True)


def get_entry(entry_id: str) -> Entry:
    entries = load_category(_category_of(entry_id))
    if entry_id not in entries:
        raise ValueError(f"no BFCL entry {entry_id!r}")
    return entries[entry_id]


@functools.cache
def test_numbers(test_fraction: float) -> frozenset[int]:
    """The scenario numbers N of the test split: the ``round(test_fraction * 200)`` numbers
    with the smallest ``sha256(f"bfcl-v4-multi-turn/{N}")``. The four categories are
    variants of the same 200 scenarios, so N keeps a scenario in one split everywhere."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be within [0, 1], got {test_fraction}")
    ranked = sorted(range(ENTRIES_PER_CATEGORY), key=lambda n: hashlib.sha256(f"{SPLIT_SALT}/{n}".encode()).hexdigest())
    return frozenset(ranked[: round(test_fraction * ENTRIES_PER_CATEGORY)])


def split_ids(categories: tuple[str, ...], split: str, test_fraction: float, ids: tuple[str, ...] | None = None) -> list[str]:
    """Entry ids of ``split`` ("train" or "test") in ``categories``, category by category,
    numbers ascending; restricted to ``ids`` when given."""
    if split not in ("train", "test"):
        raise ValueError(f"bfcl has splits 'train' and 'test', got {split!r}")
    test = test_numbers(test_fraction)
    wanted = None if ids is None else set(ids)
    out = []
    for category in categories:
        for n in range(ENTRIES_PER_CATEGORY):
            entry_id = f"{category}_{n}"
            if (n in test) == (split == "test") and (wanted is None or entry_id in wanted):
                out.append(entry_id)
    return out


# -- decoding model output --------------------------------------------------------------


@dataclasses.dataclass
class Decoded:
    """What a model response is.

    kind:
        ``"calls"``: a non-empty list of allowed calls with literal arguments (``calls``).
        ``"answer"``: no call at all (prose, or an empty list ``[]``): BFCL reads this as
            the model being done with the current user turn.
        ``"error"``: a call attempt that is malformed or not allowed (``error`` says why);
            nothing of it runs.
    """

    kind: str
    calls: list[Call] = dataclasses.field(default_factory=list)
    error: str = ""


# A response "attempts calls" when it starts like a call list or a bare call (after BFCL's
# own stripping of backticks and blanks), or holds "[name(" anywhere.
_STARTS_LIKE_CALL = re.compile(r"^(?:python\s*)?(?:\[|[A-Za-z_][\w.]*\s*\()")
_EMBEDDED_CALL_LIST = re.compile(r"\[\s*[A-Za-z_][\w.]*\s*\(")


def decode_response(text: str, allowed: set[str], signatures: dict[str, list[list[str]]] | None = None) -> Decoded:
    """Decode one response without executing anything.

    The list is found as BFCL's decoder finds it (strip backticks and blanks, add missing
    outer brackets) or, failing that, as the first ``[name(...)]`` span of the text
    (``envs.text.find_call_list``: prose around it is ignored, brackets in the prose too;
    one linear scan). Every element must then be a call of a bare name in ``allowed``
    with literal arguments (positional arguments are kept): no names, attributes, nested
    calls, comprehensions, lambdas, f-strings, ``*``/``**`` unpacking, repeated keywords or
    operators beyond literal signs. Integers are bounded (``MAX_ABS_INT``) and so are
    arguments named in ``PARAMETER_LIMITS`` (by keyword, or by position in
    ``signatures[name]``).
    """
    if "<think>" in text and "</think>" not in text:
        return Decoded("answer")  # reasoning cut short: no call list (bfcl decodes nothing)
    # Reasoning models: only what follows the reasoning is decoded, as bfcl's handlers do.
    text = text.rpartition("</think>")[2]
    stripped = text.strip("`\n ")
    if not (_STARTS_LIKE_CALL.match(stripped) or _EMBEDDED_CALL_LIST.search(text)):
        return Decoded("answer")
    try:
        source = _normalised_list(stripped)
        if source is None:
            span = find_call_list(text)
            if span is None:
                raise CallSyntaxError("the call list does not parse; answer with [func_name(param=value), ...]")
            source = text[span[0] : span[1]]
        calls = calls_of_list(source, allowed, MAX_ABS_INT)
        for call in calls:
            _check_limits(call, (signatures or {}).get(call.name, []))
    except CallSyntaxError as error:
        return Decoded("error", error=str(error))
    return Decoded("calls", calls) if calls else Decoded("answer")


def _normalised_list(text: str) -> str | None:
    """``text`` in BFCL's normalised form (a ```python fence's tag dropped, missing outer
    brackets added) when that parses as a list, else None."""
    text = re.sub(r"^python\s*(?=\[)", "", text)
    candidate = text if text.startswith("[") else "[" + text
    candidate = candidate if candidate.endswith("]") else candidate + "]"
    try:
        with warnings.catch_warnings():  # e.g. an invalid escape in a string: not our concern
            warnings.simplefilter("ignore")
            return candidate if isinstance(ast.parse(candidate, mode="eval").body, ast.List) else None
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None


def _check_limits(call: Call, signatures: list[list[str]]) -> None:
    named = dict(call.kwargs)
    for params in signatures:
        named.update({p: a for p, a in zip(params, call.args) if p not in named})
    for param, limit in PARAMETER_LIMITS.items():
        value = named.get(param)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > limit:
            raise CallSyntaxError(f"{call.name}: {param} is limited to {limit}")


@functools.cache
def signatures() -> dict[str, list[list[str]]]:
    """Function name -> the parameter lists of the backend methods of that name."""
    out: dict[str, list[list[str]]] = {}
    for cls in bfcl().backends.values():
        for name, method in inspect.getmembers(cls, inspect.isfunction):
            if not name.startswith("_"):
                out.setdefault(name, []).append([p for p in inspect.signature(method).parameters if p != "self"])
    return out


# -- execution, checking, clean-up ------------------------------------------------------


@contextlib.contextmanager
def _numeric_state_restored():
    """Backends set process-wide precision (``mpmath.mp.dps``, the decimal context);
    restore both so one episode never changes another's arithmetic."""
    import mpmath

    dps, prec = mpmath.mp.dps, decimal.getcontext().prec
    try:
        yield
    finally:
        mpmath.mp.dps, decimal.getcontext().prec = dps, prec


def is_long_context(entry: Entry) -> bool:
    # BFCL's own rule (the handler and the checker both use it).
    return "long_context" in entry.category or "composite" in entry.category


def execute(calls: list[str], entry: Entry, instance_prefix: str) -> list[str]:
    """Run validated call strings on this episode's backend instances (BFCL's executor);
    returns one result string per call."""
    with _numeric_state_restored():
        results, _ = bfcl().executor.execute_multi_turn_func_call(
            calls,
            entry.entry["initial_config"],
            entry.entry["involved_classes"],
            instance_prefix,
            entry.id,
            long_context=is_long_context(entry),
            is_evaL_run=False,
        )
    return results


def check(decoded: list[list[list[str]]], entry: Entry, instance_prefix: str) -> dict[str, Any]:
    """BFCL's ``multi_turn_checker`` on the decoded calls (user turn -> steps -> calls)."""
    with _numeric_state_restored():
        return bfcl().checker.multi_turn_checker(decoded, entry.ground_truth, entry.entry, entry.category, instance_prefix)


def turn_passes(decoded: list[list[list[str]]], entry: Entry, instance_prefix: str) -> list[bool]:
    """Per user turn with a non-empty ground truth: does it pass the checker's per-turn
    checks (non-empty response, state, execution results)?

    The same steps as ``multi_turn_checker`` with bfcl's own sub-checkers, except that a
    failing turn does not stop the count (the official checker returns at the first one).
    """
    b = bfcl()
    kwargs = dict(
        initial_config=entry.entry["initial_config"],
        involved_classes=entry.entry["involved_classes"],
        test_entry_id=entry.id,
        long_context=is_long_context(entry),
        is_evaL_run=True,
    )
    passes = []
    all_results: list[str] = []
    with _numeric_state_restored():
        for turn, truth in enumerate(entry.ground_truth):
            steps = decoded[turn] if turn < len(decoded) else []
            # An empty call list still returns this episode's instances.
            model_instances = b.executor.execute_multi_turn_func_call([], model_name=instance_prefix, **kwargs)[1]
            for step in steps:
                results, model_instances = b.executor.execute_multi_turn_func_call(step, model_name=instance_prefix, **kwargs)
                all_results.extend(results)
            truth_results, truth_instances = b.executor.execute_multi_turn_func_call(
                truth, model_name=instance_prefix + "_ground_truth", **kwargs
            )
            if not truth:
                continue
            ok = bool(steps) and not b.executor.is_empty_execute_response(steps)
            ok = ok and b.checker.state_checker(model_instances, truth_instances)["valid"]
            ok = ok and b.checker.response_checker(all_results, truth_results, turn)["valid"]
            passes.append(bool(ok))
    return passes


def purge_instances(instance_prefix: str) -> int:
    """Drop the backend instances BFCL cached in its executor's module globals for this
    prefix (BFCL never clears them); returns how many were dropped."""
    if not instance_prefix:
        return 0
    namespace = vars(bfcl().executor)
    stale = [k for k in namespace if k.startswith(instance_prefix + "_")]
    for key in stale:
        del namespace[key]
    return len(stale)
