"""Adversarial model outputs against every env: exceptions out of ``step``, side effects,
step time, observation size and memory.

A mutation fuzzer: at every step it takes the response a scripted policy would give in the
current state (tool_tasks' oracle, BFCL's ground truth, the AppWorld fake's solution) and
breaks it with 1-3 random edits: hostile fragments inserted (code, brackets, quotes,
control characters, reasoning tags, fences), spans deleted or repeated up to and past the
action-length bound, arguments swapped for huge, deep or unhashable literals or for code,
prose with brackets put around it, or the whole text replaced by noise. Episodes run to
their end, so the end-of-episode scoring is measured too.

Side effects: every env runs in a fresh working directory, which must stay empty; no file
named like an injected payload (``pwned*``) may appear there or under the temp folder.
AppWorld is driven over HTTP against the protocol fake in ``tests/fake_appworld.py``
(client side: its step time includes the fake server's execution of the code).

    python benchmarks/adversarial_outputs.py --outputs 10000 --out results/adversarial_outputs.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FRAGMENTS = [
    "[", "]", "(", ")", "{", "}", ",", "=", "'", '"', "\\", "#", "\n", "\x00", "\u202e", "**", "*", "-", "lambda: 0",
    "__import__('os').system('touch pwned_os')", "open('pwned_open.txt', 'w')", "[x for x in ()]", "f'{1}'",
    "().__class__.__base__.__subclasses__()", "exec('1')", "<think>", "</think>", "```python\n", "```", "Step [1]: ",
    "get_stock(", "cd(folder=", "add_item(", "finish(", "apis.supervisor.complete_task(", "import os\n",
]
LITERALS = [
    "[]", "{}", "{1: [2, {3: 4}]}", "{1, 2}", "None", "True", "1e999", "-0.0", "0x" + "f" * 3600, "9" * 4000, "1j",
    "b'\\xff'", "'" + "y" * 3000 + "'", "'\\u0000'", "'a\\nb'", "(" * 180 + "1" + ")" * 180, "-" * 3000 + "1",
    "[" * 150 + "]" * 150, "not " * 500 + "1", "1+" * 1000 + "1", "...", "__import__('os')", "x",
]


def mutate(text: str, rng: np.random.Generator, max_chars: int) -> str:
    """``text`` with 1-3 random edits (see the module docstring); up to twice ``max_chars``."""
    for _ in range(int(rng.integers(1, 4))):
        op = int(rng.integers(9))
        at = int(rng.integers(len(text) + 1))
        if op == 0:
            text = text[:at] + str(rng.choice(FRAGMENTS)) + text[at:]
        elif op == 1 and text:
            end = int(rng.integers(at, len(text) + 1))
            text = text[:at] + text[end:]
        elif op == 2 and text:
            end = min(len(text), at + int(rng.integers(1, 40)))
            text = text[:at] + text[at:end] * int(rng.integers(2, max(3, 2 * max_chars // max(1, end - at)))) + text[end:]
        elif op == 3:
            # an argument's value replaced by a hostile literal
            eq = text.find("=", at)
            stop = min([i for i in (text.find(",", eq), text.find(")", eq)) if i > eq] or [len(text)])
            if eq >= 0:
                text = text[: eq + 1] + str(rng.choice(LITERALS)) + text[stop:]
        elif op == 4:
            text = str(rng.choice(["Sure [1]: ", "Step [2] then ", "```python\n", "<think>[x]</think>", "I'll call "])) + text
        elif op == 5:
            text = text[:at]
        elif op == 6:
            text = "".join(rng.choice(FRAGMENTS + list("abc()[]=,'\" 0123456789"), size=int(rng.integers(1, 200))))
        elif op == 7:
            text = str(rng.choice(list("[](){}'\"\\-a "))) * int(rng.integers(1, 2 * max_chars))
        else:
            text = "".join(chr(int(c)) for c in rng.integers(1, 0x2FFF, size=int(rng.integers(1, 400))))
    return text[: 2 * max_chars]


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Stats:
    def __init__(self, name: str):
        self.name, self.outputs, self.episodes = name, 0, 0
        self.exceptions: list[str] = []
        self.step_s: list[float] = []
        self.outside_space = 0
        self.max_observation_chars = 0
        self.endings: dict[str, int] = {}
        self.env_errors: list[str] = []
        self.slowest = (0.0, "", False)  # seconds, the action, whether it ended the episode
        self.rss_mb_warm = float("nan")  # after a tenth of the outputs: growth after it is a leak

    def report(self) -> dict:
        steps = np.asarray(self.step_s)
        return {
            "env": self.name, "outputs": self.outputs, "episodes": self.episodes,
            "exceptions": len(self.exceptions), "exception_examples": self.exceptions[:5],
            "observations_outside_space": self.outside_space, "max_observation_chars": self.max_observation_chars,
            "step_ms_median": float(np.median(steps) * 1e3), "step_ms_p99": float(np.quantile(steps, 0.99) * 1e3),
            "step_ms_max": float(steps.max() * 1e3), "steps_over_100ms": int((steps > 0.1).sum()), "endings": self.endings, "env_error_examples": self.env_errors,
            "slowest_step": {"ms": self.slowest[0] * 1e3, "action": self.slowest[1], "ended_episode": self.slowest[2]},
            "rss_mb_after_a_tenth": self.rss_mb_warm, "rss_mb_at_end": rss_mb(),
        }


def run_env(stats: Stats, make_env, reset, scripted, outputs: int, rng: np.random.Generator) -> None:
    """Play episodes of ``make_env()`` with mutated scripted responses until ``outputs`` steps."""
    e = make_env()
    max_chars = e.action_space("turn_0").max_length
    while stats.outputs < outputs:
        reset(e, rng)
        stats.episodes += 1
        ended = False
        for agent in e.agent_iter():
            obs, _, terminated, truncated, info = e.last()
            if terminated or truncated:
                if not ended:  # once per episode
                    ended = True
                    key = str(info.get("end_reason") or ("env_error" if "env_error" in info else "done"))
                    stats.endings[key] = stats.endings.get(key, 0) + 1
                    if "env_error" in info and len(stats.env_errors) < 5:
                        stats.env_errors.append(str(info["env_error"])[:200])
                e.step(None)
                continue
            stats.max_observation_chars = max(stats.max_observation_chars, len(obs))
            stats.outside_space += not e.observation_space(agent).contains(obs)
            try:
                action = mutate(scripted(e), rng, max_chars)
            except Exception:  # a scripted policy lost in a broken state: noise instead
                action = mutate("", rng, max_chars)
            stats.outputs += 1
            start = time.perf_counter()
            try:
                e.step(action)
            except Exception as error:
                stats.exceptions.append(f"{type(error).__name__}: {error} <- {action[:120]!r}")
                traceback.print_exc(limit=3)
                break
            finally:
                stats.step_s.append(time.perf_counter() - start)
                if stats.step_s[-1] == max(stats.step_s[-1], stats.slowest[0]):
                    stats.slowest = (stats.step_s[-1], action[:80], not e.agents or agent not in e.agents or bool(
                        e.terminations.get(agent) or e.truncations.get(agent)))
            if stats.outputs == outputs // 10:
                stats.rss_mb_warm = rss_mb()
            if stats.outputs >= outputs:
                break
    e.close()


def tool_tasks_case(outputs, rng):
    from envs.tool_tasks import tool_tasks

    stats = Stats("tool_tasks")

    def scripted(e):
        return tool_tasks.oracle_response(e.task, e.messages)

    run_env(stats, lambda: tool_tasks.env(max_turns=4), lambda e, r: e.reset(options={"task_id": int(r.integers(10**6))}),
            scripted, outputs, rng)
    return stats


def bfcl_case(outputs, rng):
    from envs import bfcl
    from envs.bfcl import backend

    stats = Stats("bfcl")
    ids = [i for c in backend.CATEGORIES for i in bfcl.env(categories=c).task_ids("train")]
    run_env(stats, lambda: bfcl.env(max_turns=8), lambda e, r: e.reset(options={"task_id": ids[int(r.integers(len(ids)))]}),
            bfcl.ground_truth_response, outputs, rng)
    return stats


def appworld_case(outputs, rng):
    sys.path.insert(0, str(ROOT / "tests"))
    from fake_appworld import SPLITS, FakeAppWorldServer, solution_response

    from envs.appworld import env as appworld_env
    from envs.text import decode_messages

    stats = Stats("appworld")
    ids = SPLITS["train"] + SPLITS.get("dev", [])
    with FakeAppWorldServer() as server:
        run_env(
            stats,
            lambda: appworld_env(server_urls=server.url, task_ids=SPLITS, max_turns=4, lock_servers=False, request_timeout_s=5.0),
            lambda e, r: e.reset(options={"task_id": ids[int(r.integers(len(ids)))]}),
            lambda e: solution_response(decode_messages(e.observe(e.agent_selection))), outputs, rng,
        )
    return stats


CASES = {"tool_tasks": (tool_tasks_case, 0.4), "bfcl": (bfcl_case, 0.4), "appworld": (appworld_case, 0.2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", type=int, default=10_000, help="model outputs in all, shared 40/40/20")
    parser.add_argument("--envs", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the figures to this JSON file")
    args = parser.parse_args()

    tmp = Path(tempfile.gettempdir())
    payloads_before = set(tmp.glob("pwned*"))
    rss_start = rss_mb()
    share = sum(CASES[name][1] for name in args.envs)
    reports = []
    with tempfile.TemporaryDirectory() as workdir, contextlib.chdir(workdir):
        for name in args.envs:
            case, weight = CASES[name]
            start = time.perf_counter()
            stats = case(round(args.outputs * weight / share), np.random.default_rng([args.seed, len(reports)]))
            report = stats.report() | {"seconds": time.perf_counter() - start}
            reports.append(report)
            print(json.dumps(report), flush=True)
        files_left = sorted(str(p.relative_to(workdir)) for p in Path(workdir).rglob("*"))
    summary = {
        "outputs": sum(r["outputs"] for r in reports),
        "exceptions": sum(r["exceptions"] for r in reports),
        "observations_outside_space": sum(r["observations_outside_space"] for r in reports),
        "files_created": files_left + sorted(str(p) for p in set(tmp.glob("pwned*")) - payloads_before),
        "step_ms_max": max(r["step_ms_max"] for r in reports),
        "steps_over_100ms": sum(r["steps_over_100ms"] for r in reports),
        "rss_mb_start": rss_start, "rss_mb_end": rss_mb(), "rss_mb_peak": rss_mb("VmHWM"),
        "envs": reports,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "envs"}, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
