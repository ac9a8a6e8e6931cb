"""Engine actors: rollout engines that the env runners share (``engine.num_engines >= 1``).

Without them every env runner holds a whole model and generates for its own sub-envs only.
With them, as in verl, OpenRLHF and SkyRL, generation runs in ``num_engines`` Ray actors
(``RolloutEngine``, each with ``num_gpus_per_engine`` GPUs), and an env runner holds the
tokenizer and its envs: its module (``LLMRLModule`` with ``engine_client``) encodes the
prompts and sends their token ids, with one sampling seed each, to its engine; the engine
answers with the sampled ids and their log-probs. Env runner ``i`` uses engine
``(i - 1) mod num_engines``.

An engine batches the requests that reach it together: requests of several env runners that
arrive while it is busy (or within ``GATHER_S`` of each other) are generated as one batch.
Each prompt samples from a generator seeded with its own seed (``TokenPolicy.decode``,
vLLM's per-request seed), so what a runner samples does not depend on which other requests
shared its batch, up to the float rounding of batched kernels.

Weights: the algorithm pushes the learner's inference-only state to every engine with a
version (``set_weights``): with LoRA the adapter alone (the learner's state holds only the
trainable tensors), which a vLLM engine then loads as a new LoRA adapter; else the full
weights, in chunks of whole layers (``weight_chunks``). An engine that Ray restarted
(``max_restarts=-1``) comes back with the model folder's weights and no version, and gets
the current ones before the next sampling round (``SeeUPO.rollout_engines``); until then it
refuses requests that expect a version (``StaleEngineError``), so no episode is recorded
under the wrong weights.

Placement: ``split`` engines hold GPUs of their own; a ``colocated`` engine runs on one
learner's GPU (engine ``i`` on learner ``i``'s, by its ``CUDA_VISIBLE_DEVICES``) and releases
its memory (``sleep``) while the learners update: vLLM's sleep mode (level 1: weights to CPU,
KV cache dropped), the transformers engine moves its model to CPU.

The actor is built from the module's settings alone, so it runs without RLlib's env runner
machinery (``start_engines`` starts it in Ray); its batching, ``BatchingEngine``, needs no Ray
at all.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
GATHER_S = 0.02  # how long an idle engine waits for more requests before it generates
MAX_CONCURRENCY = 256  # requests an engine actor holds at once (one per env runner is typical)


class StaleEngineError(RuntimeError):
    """An engine actor asked for generations under weights it does not hold (Ray restarted
    it mid-round, with the model folder's weights): the runner's groups are sampled again
    once the algorithm has given it the current ones."""


@dataclass
class _Request:
    prompts: list[list[int]]
    sample: bool
    seeds: list[int] | None
    done: threading.Event = field(default_factory=threading.Event)
    results: list[dict[str, Any]] | None = None
    error: BaseException | None = None


# The most bytes of weights in one message when full weights move (learner -> engine actor,
# engine -> vLLM worker), unless a single decoder layer is larger.
WEIGHT_CHUNK_BYTES = 1 << 30


def weight_chunks(weights: dict[str, torch.Tensor], limit: int | None = None) -> list[dict[str, torch.Tensor]]:
    """``weights`` split into chunks of whole decoder layers (``...layers.<i>.``; any other
    tensor is a group of its own), each at most ``limit`` bytes (``WEIGHT_CHUNK_BYTES``)
    unless one group alone is larger: full weights stream in bounded messages, and an
    engine that reloads a chunk always gets every weight of a layer at once."""
    import re

    limit = WEIGHT_CHUNK_BYTES if limit is None else limit
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in weights.items():
        layer = re.match(r"(.*\.layers\.\d+)\.", name)
        groups.setdefault(layer.group(1) if layer else name, {})[name] = tensor
    chunks, current, size = [], {}, 0
    for group in groups.values():
        group_bytes = state_bytes(group)
        if current and size + group_bytes > limit:
            chunks.append(current)
            current, size = {}, 0
        current.update(group)
        size += group_bytes
    return chunks + [current] if current else chunks


def state_bytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) module state."""
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    return int(getattr(state, "nbytes", 0))


class BatchingEngine:
    """Generation requests from several callers, generated together: each ``generate`` call
    waits while a thread of its own gathers every request that arrived (within ``GATHER_S``
    of the first, or while the last batch ran) into one call of ``generate_batch``. Ray-free:
    ``RolloutEngine`` serves a module through it, ``benchmarks/rollout_throughput.py`` a bare
    model on a GPU machine without Ray.

    Args:
        generate_batch: ``(prompts, sample, seeds) -> results``, one result per prompt, as
            ``LLMRLModule.generate``.
    """

    def __init__(self, generate_batch):
        self._generate_batch = generate_batch
        self.counts = {"requests": 0, "batches": 0, "prompts": 0, "sleeps": 0}
        self._queue: list[_Request] = []
        self._arrived = threading.Condition()
        threading.Thread(target=self._serve, daemon=True, name="rollout-engine").start()

    def generate(self, prompts: list[list[int]], sample: bool, seeds: list[int] | None = None) -> list[dict[str, Any]]:
        """``LLMRLModule.generate`` for one caller's prompts, batched with the others'."""
        request = _Request([list(map(int, p)) for p in prompts], bool(sample), seeds)
        with self._arrived:
            self._queue.append(request)
            self._arrived.notify()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.results

    def _serve(self) -> None:
        while True:
            with self._arrived:
                while not self._queue:
                    self._arrived.wait()
            time.sleep(GATHER_S)  # let the other runners' requests of this step arrive
            with self._arrived:
                sample = self._queue[0].sample  # greedy and sampled requests are separate batches
                batch = [r for r in self._queue if r.sample == sample]
                self._queue = [r for r in self._queue if r.sample != sample]
            self._generate(batch, sample)

    def _generate(self, batch: list[_Request], sample: bool) -> None:
        try:
            prompts = [p for r in batch for p in r.prompts]
            seeds = None
            if sample:
                seeds = [s for r in batch for s in (r.seeds if r.seeds is not None else
                                                    torch.randint(0, 2**31 - 1, (len(r.prompts),)).tolist())]
            results = self._generate_batch(prompts, sample, seeds)
            self.counts["requests"] += len(batch)
            self.counts["batches"] += 1
            self.counts["prompts"] += len(prompts)
            start = 0
            for request in batch:
                request.results = results[start : start + len(request.prompts)]
                start += len(request.prompts)
        except BaseException as error:  # every request of the batch gets the error
            for request in batch:
                request.error = error
        finally:
            for request in batch:
                request.done.set()


class RolloutEngine(BatchingEngine):
    """One rollout engine, a threaded Ray actor (see the module docstring).

    Args:
        model_config: the run's ``model_config`` (``LLMRLModule``'s settings); the engine
            generates in-process with ``engine.kind`` (``transformers`` or ``vllm``).
        torch_threads: torch's intra-op threads on CPU (None: torch's default).
    """

    def __init__(self, model_config: dict[str, Any], torch_threads: int | None = None):
        from envs.text import AnyText
        from rllib_seeupo.llm.module import LLMRLModule, checked_engine

        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        engine = checked_engine(model_config.get("engine", "transformers"))
        self.kind, self.colocated = engine["kind"], engine["placement"] == "colocated"
        own = {**engine, "num_engines": 0, "placement": "split"}  # generate here, in this actor
        self.module = LLMRLModule(observation_space=AnyText(10**6), action_space=AnyText(10**6), inference_only=True,
                                  model_config={**model_config, "engine": own})
        self.device = torch.device("cuda" if self.kind == "transformers" and torch.cuda.is_available() else "cpu")
        self.module.to(self.device)
        if self.kind == "vllm":
            self.module.vllm_engine(sleep_mode=self.colocated)  # started now, not at the first request
        self.version = None  # the learner weights' version it holds; None: the model folder's
        self.sleeping = False
        self._lock = threading.Lock()  # one generation or one weight load at a time
        self._syncs: list[dict[str, float]] = []
        self._pending = [0.0, 0.0]  # bytes and seconds of the chunks of a push so far
        super().__init__(self._generate_with_module)

    def generate(self, prompts: list[list[int]], sample: bool, seeds: list[int] | None = None,
                 expected_version: int | None = None) -> list[dict[str, Any]]:
        """``BatchingEngine.generate``; with ``expected_version`` (the weights version the
        runner was sent with) a ``StaleEngineError`` unless the engine holds it."""
        if expected_version is not None and self.version != expected_version:
            raise StaleEngineError(f"engine holds weights version {self.version}, the runner expects {expected_version}")
        return super().generate(prompts, sample, seeds)

    def _generate_with_module(self, prompts: list[list[int]], sample: bool, seeds: list[int] | None):
        with self._lock:
            self._wake_up()
            return self.module.generate(prompts, sample=sample, seeds=seeds)

    # -- weights and memory ---------------------------------------------------------------

    def set_weights(self, state: dict[str, Any], version: int | None) -> int | None:
        """Take the learner's inference-only module state (``LLMRLModule.get_state``), or a
        chunk of it (``weight_chunks``; ``version`` None until the last one); returns
        ``version``. A vLLM engine loads it into vLLM before its next generation."""
        with self._lock:
            start = time.perf_counter()
            self.module.set_state(state)
            self.version = version
            self._pending[0] += float(state_bytes(state))
            self._pending[1] += time.perf_counter() - start
            if self.kind == "transformers" and version is not None:  # vLLM records its own load
                self._syncs.append({"bytes": self._pending[0], "seconds": self._pending[1]})
            if version is not None:
                self._pending = [0.0, 0.0]
        return version

    def sleep(self) -> None:
        """Release the accelerator memory until the next generation (colocated placement)."""
        with self._lock:
            if self.sleeping:
                return
            if self.kind == "vllm":
                self.module.vllm_engine().sleep()
            elif self.device.type == "cuda":
                self.module.to("cpu")
                torch.cuda.empty_cache()
            self.sleeping = True
            self.counts["sleeps"] += 1

    def _wake_up(self) -> None:
        if self.sleeping:
            if self.kind == "vllm":
                self.module.vllm_engine().wake_up()
            else:
                self.module.to(self.device)
            self.sleeping = False

    def info(self) -> dict[str, Any]:
        """The weights' version, the process id, the GPUs it sees (``CUDA_VISIBLE_DEVICES``,
        None if unset) and the request counts."""
        return {"version": self.version, "pid": os.getpid(), "sleeping": self.sleeping,
                "visible_devices": os.environ.get(VISIBLE_DEVICES), **self.counts}

    def pop_weight_sync_stats(self) -> list[dict[str, float]]:
        """The weight loads since the last call, ``{"bytes", "seconds"}`` each."""
        with self._lock:
            syncs, self._syncs = self._syncs + self.module.pop_weight_sync_stats(), []
        return syncs


def start_engines(model_config: dict[str, Any], *, torch_threads: int | None = None,
                  visible_devices: list[str | None] | None = None) -> list:
    """Start ``engine.num_engines`` ``RolloutEngine`` actors for ``model_config``; returns
    their handles. Ray restarts an engine whose process dies (its requests in flight fail and
    are sampled again by SeeUPO).

    Args:
        visible_devices: for colocated engines, engine ``i``'s ``CUDA_VISIBLE_DEVICES``: the
            GPUs that Ray gave learner ``i`` (None: what the node's processes see). Such an
            engine asks Ray for no GPU (``num_gpus_per_engine`` is 0): the learner's
            reservation covers the GPU they share, as verl's hybrid engine shares the
            actor's.
    """
    import ray

    from rllib_seeupo.llm.module import checked_engine

    engine = checked_engine(model_config.get("engine", "transformers"))
    options = dict(num_cpus=engine["num_cpus_per_engine"], num_gpus=engine["num_gpus_per_engine"], max_restarts=-1,
                   max_task_retries=0, max_concurrency=MAX_CONCURRENCY)
    devices = visible_devices or [None] * engine["num_engines"]
    if len(devices) != engine["num_engines"]:
        raise ValueError(f"start_engines: {len(devices)} visible_devices for {engine['num_engines']} engines")
    # Ray leaves CUDA_VISIBLE_DEVICES alone in an actor that asks for no GPU, so the
    # runtime env's value holds in the engine's process (and in a restarted one).
    return [
        ray.remote(RolloutEngine).options(
            **options, **({} if d is None else {"runtime_env": {"env_vars": {VISIBLE_DEVICES: d}}})
        ).remote(model_config, torch_threads)
        for d in devices
    ]
