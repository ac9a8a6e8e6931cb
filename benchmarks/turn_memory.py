"""Peak memory of one turn update (forward, backward and step of SeeUPO's learner) as the
turn's rows grow, with and without a token budget per micro-batch (``micro_batch_tokens``).

A tiny Llama (2 layers, 64 wide by default) gets a real LLM's vocabulary (Qwen3's 151 936):
the output projection and its log-softmax then dominate, as they do at scale. Each
measurement runs in a fresh process (the peak RSS is per process) and reports the peak
above the RSS after the learner was built and the batch made.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/turn_memory.py --rows 4 8 16 --budgets none 2048 --out results/turn_memory.json

The script only uses what every checkout's learner has, so ``--budgets none`` also runs on
an older commit (``git worktree``) for a before/after comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_model(folder: Path, vocab: int, hidden: int, layers: int) -> str:
    """The tiny test model's tokenizer with a ``vocab``-row embedding and output projection."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rllib_seeupo.llm.tiny import build_tiny_model

    if (folder / "config.json").exists():
        return str(folder)
    tiny = build_tiny_model(folder.with_name(folder.name + "-tokenizer"))
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(model: str, rows: int, prompt: int, response: int, budget: int | None) -> dict:
    """One turn update of ``rows`` rows in this process; the peak RSS above the start."""
    import numpy as np
    import torch
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from envs.text import AnyText
    from rllib_seeupo import SHARED_MODULE_ID, SeeUPOConfig
    from rllib_seeupo.learner import ADVANTAGES, COMPOUND_FACTOR, TURN
    from rllib_seeupo.llm.module import PROMPT_IDS, RESPONSE_IDS, LLMRLModule
    from rllib_seeupo.modules.api import BEHAVIOUR_LOGP

    torch.set_num_threads(1)
    spaces = (AnyText(10**6), AnyText(4000))
    training = {"kl_coeff": 0.0, "lr": 1e-5}
    if budget is not None:
        training["micro_batch_tokens"] = budget
    config = (
        SeeUPOConfig()
        .environment(observation_space=spaces[0], action_space=spaces[1])
        .rl_module(rl_module_spec=RLModuleSpec(module_class=LLMRLModule), model_config={"model": model, "max_prompt_tokens": 8192})
        .training(**training)
    )
    learner = config.build_learner(env=None, spaces={SHARED_MODULE_ID: spaces})
    rng = np.random.default_rng(0)
    columns = LLMRLModule.collate_turn_rows([
        {
            PROMPT_IDS: rng.integers(10, 500, prompt),  # no shared head: every row its own prompt
            RESPONSE_IDS: rng.integers(10, 500, response),
            BEHAVIOUR_LOGP: np.full(response, -5.0, np.float32),
        }
        for _ in range(rows)
    ])
    columns[ADVANTAGES] = rng.normal(size=rows).astype(np.float32)
    columns[COMPOUND_FACTOR] = np.ones(rows, np.float32)
    columns[TURN] = np.zeros(rows, np.int64)
    batch = {SHARED_MODULE_ID: {k: torch.as_tensor(v) for k, v in columns.items()}}
    start = rss_bytes()
    learner._uncompiled_update(batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rows": rows, "tokens": rows * (prompt + response), "budget": budget, "peak_above_start_mb": (peak - start) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--budgets", nargs="+", default=["none", "2048"], help="micro_batch_tokens values; none: unset")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens per row")
    parser.add_argument("--response", type=int, default=256, help="response tokens per row")
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--model-dir", default=os.path.join(tempfile.gettempdir(), "turn_memory_model"))
    parser.add_argument("--out", help="write the measurements as JSON here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: rows,budget
    args = parser.parse_args()
    model = build_model(Path(args.model_dir) / f"v{args.vocab}-h{args.hidden}-l{args.layers}", args.vocab, args.hidden, args.layers)
    if args.one:
        rows, budget = args.one.split(",")
        print(json.dumps(measure(model, int(rows), args.prompt, args.response, None if budget == "none" else int(budget))))
        return
    results = []
    for budget in args.budgets:
        for rows in args.rows:
            out = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--one", f"{rows},{budget}"],
                capture_output=True, text=True, cwd=ROOT, check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(result)
            print(f"budget {str(result['budget']):>6}  rows {rows:3d}  tokens {result['tokens']:6d}  "
                  f"peak above start {result['peak_above_start_mb']:8.1f} MB", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"vocab": args.vocab, "hidden": args.hidden, "layers": args.layers,
                                              "prompt": args.prompt, "response": args.response, "results": results}, indent=1))


if __name__ == "__main__":
    main()
