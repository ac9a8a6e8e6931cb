"""Engine actors (``engine.num_engines``): env runners that hold no model send their prompts
to a shared rollout engine (``rllib_seeupo.llm.engine_actor``). Here the transformers engine
on CPU with the tiny model; ``tests/test_vllm_engine.py`` runs the vLLM engine as an actor."""

import numpy as np
import pytest
import ray
import torch
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from envs.text import AnyText
from rllib_seeupo import SHARED_MODULE_ID, SeeUPOConfig
from rllib_seeupo.llm.module import LLMRLModule
from rllib_seeupo.modules.api import BEHAVIOUR_LOGP, RESPONSE_MASK
from rllib_seeupo.rollouts import sample_scheduled, to_rollout

GENERATION = {"max_new_tokens": 12, "response_prefix": "[", "stop_strings": ["]"], "temperature": 0.8}
LORA = {"rank": 4, "init": False}


def _config(model, num_env_runners=2, **engine):
    return (
        SeeUPOConfig()
        .environment("seeupo/tool_tasks", env_config={"max_turns": 2})
        .env_runners(num_env_runners=num_env_runners, num_envs_per_env_runner=2)
        .rl_module(rl_module_spec=RLModuleSpec(module_class=LLMRLModule), model_config={
            "model": model, "lora": LORA, **GENERATION,
            "engine": {"kind": "transformers", "num_engines": 1, "num_cpus_per_engine": 0, **engine},
        })
        .training(group_size=2, tasks_per_iteration=4, lr=1e-2)
        .fault_tolerance(restart_failed_env_runners=True)
        .debugging(seed=0)
    )


def _recorded_rows(algo, worker):
    """Episodes sampled by env runner ``worker`` through its engine, as collated turn rows."""
    engines = algo.rollout_engines()
    [(_, episodes, _)] = algo.env_runner_group.foreach_env_runner(
        lambda runner: sample_scheduled(runner, {worker: [0, 1]}, (0, 99), engines),
        local_env_runner=False, remote_worker_ids=[worker],
    )
    rows = [turn for e in episodes for turn in to_rollout(e).turns.values()]
    return {k: torch.as_tensor(v) for k, v in LLMRLModule.collate_turn_rows(rows).items()}


def test_two_env_runners_share_one_engine_actor_that_tracks_the_learner_and_survives_its_loss(ray_session, tiny_model):
    # Colocated: the engine sleeps while the learner updates (on CPU its model stays put).
    algo = _config(tiny_model, placement="colocated").build_algo()
    try:
        [engine] = algo.rollout_engines()
        # The env runners hold no model: their modules are the engine's clients.
        clients = algo.env_runner_group.foreach_env_runner(
            lambda runner: (runner.module[SHARED_MODULE_ID].engine_client,
                            sum(p.numel() for p in runner.module[SHARED_MODULE_ID].parameters())),
            local_env_runner=False,
        )
        assert clients == [(True, 0), (True, 0)]
        result = algo.train()
        assert result["rollouts"]["num_rollouts"] == 8 and result["rollouts"]["num_groups"] == 4
        before = ray.get(engine.info.remote())
        # Both runners' requests reached the one engine (which batches those that arrive
        # together: test_requests_that_wait_for_a_busy_engine_go_in_one_batch).
        assert before["version"] == 1 and before["requests"] >= before["batches"] > 0
        assert before["sleeps"] == 1 and before["sleeping"]  # asleep since the update, until its next request
        syncs = result["env_runners"]["weight_sync"]  # version 0 before sampling: the adapter alone
        learner = algo.learner_group._learner.module[SHARED_MODULE_ID]
        adapter_bytes = sum(p.numel() * p.element_size() for n, p in learner.named_parameters() if "lora_" in n)
        assert syncs["count"] == 1 and syncs["bytes"] == adapter_bytes
        # What the engine recorded at sampling is what the learner computes after the sync.
        for worker in (1, 2):
            batch = _recorded_rows(algo, worker)
            with torch.no_grad():
                recomputed = learner.response_logp(batch)
            gap = torch.where(batch[RESPONSE_MASK], (recomputed - batch[BEHAVIOUR_LOGP]).abs(), 0).max()
            assert gap < 1e-4
        assert not ray.get(engine.info.remote())["sleeping"]

        # The engine's process exits (as a crash would) at its next request: the iteration
        # samples the lost groups again once Ray has restarted the engine.
        ray.get(engine.__ray_call__.remote(_exit_at_next_request()))
        result = algo.train()
        assert result["rollouts"]["retried_groups"] > 0
        assert result["rollouts"]["num_groups"] == 4 and result["rollouts"]["num_rollouts"] == 8
        after = ray.get(engine.info.remote())
        assert after["pid"] != before["pid"]  # Ray restarted it ...
        assert after["version"] == 2  # ... it got the learner's weights back, then this update's
    finally:
        algo.stop()


def test_colocated_engines_run_on_their_own_learners_gpus(ray_session, tiny_model):
    """Two learners, two colocated engines: engine i sees learner i's GPUs (its
    ``CUDA_VISIBLE_DEVICES``) and asks Ray for none. On CPU no learner holds a GPU, so each
    learner's process is first given the CUDA_VISIBLE_DEVICES that Ray sets for a learner's
    GPU; the engines start at the first ``rollout_engines`` call (the first sampling round),
    after the learners. The colocated iteration itself: the test above."""
    algo = _config(tiny_model, 0, num_engines=2, placement="colocated").learners(num_learners=2).build_algo()
    try:
        algo.learner_group.foreach_learner(_pretend_gpu(first=6))
        infos = [ray.get(engine.info.remote()) for engine in algo.rollout_engines()]
        assert [info["visible_devices"] for info in infos] == ["6", "7"]
        assert all(info["version"] == 0 for info in infos)  # started, and given the learners' weights
    finally:
        algo.stop()


def _pretend_gpu(first: int):
    """For ``foreach_learner``: the learner of rank r sees GPU ``first + r``. A closure, so
    Ray pickles it by value."""

    def set_devices(learner):
        import os

        import torch.distributed as dist

        os.environ["CUDA_VISIBLE_DEVICES"] = str(first + dist.get_rank())

    return set_devices


def _exit_at_next_request():
    """A function for ``__ray_call__`` that makes the engine's process exit (as a crash would)
    at its next request. A closure, so Ray pickles it by value (the actor cannot import this
    test module)."""

    def arm(engine):
        import os

        engine.module.generate = lambda *args, **kwargs: os._exit(1)

    return arm


def test_a_sampling_seed_gives_the_same_responses_alone_or_batched(tiny_model):
    """Per-row seeds: a row's sample does not depend on the rows that share its batch."""
    module = LLMRLModule(observation_space=AnyText(10**6), action_space=AnyText(4000), inference_only=True,
                         model_config={"model": tiny_model, **GENERATION})
    prompts = [module.tokenizer.encode(f"task {i}: add 3 pens") for i in range(4)]
    together = module.generate(prompts, sample=True, seeds=[11, 12, 13, 14])
    alone = [module.generate(prompts[i:i + 1], sample=True, seeds=[11 + i])[0] for i in (2, 0)]
    for got, i in zip(alone, (2, 0)):
        assert np.array_equal(got["response_ids"], together[i]["response_ids"])
        assert np.allclose(got["response_logp"], together[i]["response_logp"], atol=1e-5)
    assert len({tuple(r["response_ids"]) for r in together}) > 1


def test_requests_that_wait_for_a_busy_engine_go_in_one_batch():
    import threading
    import time

    from rllib_seeupo.llm.engine_actor import BatchingEngine

    release, batches = threading.Event(), []

    def generate_batch(prompts, sample, seeds):
        batches.append((len(prompts), seeds))
        release.wait()
        return [{"response_ids": p[::-1]} for p in prompts]

    engine = BatchingEngine(generate_batch)
    results = {}
    calls = [("a", [[1, 2]], [7]), ("b", [[3], [4, 5]], [8, 9]), ("c", [[6]], [10])]
    threads = [threading.Thread(target=lambda n=n, p=p, s=s: results.__setitem__(n, engine.generate(p, True, s)))
               for n, p, s in calls]
    threads[0].start()
    while not batches:  # a's batch is running ...
        time.sleep(0.01)
    threads[1].start(), threads[2].start()
    while len(engine._queue) < 2:  # ... while b and c queue up
        time.sleep(0.01)
    release.set()
    for t in threads:
        t.join(timeout=10)
    assert batches == [(1, [7]), (3, [8, 9, 10])] or batches == [(1, [7]), (3, [10, 8, 9])]
    assert results == {"a": [{"response_ids": [2, 1]}], "b": [{"response_ids": [3]}, {"response_ids": [5, 4]}],
                       "c": [{"response_ids": [6]}]}  # each caller gets its own rows back
    assert engine.counts == {"requests": 3, "batches": 2, "prompts": 4, "sleeps": 0}


def test_an_engine_without_the_expected_weights_refuses_to_generate(tiny_model):
    """A restarted engine holds the model folder's weights (version None) until the algorithm
    gives it the current ones: a runner that expects them gets a StaleEngineError, so its
    episodes are sampled again instead of being recorded under the wrong policy."""
    from rllib_seeupo.llm.engine_actor import RolloutEngine, StaleEngineError

    engine = RolloutEngine({"model": tiny_model, "lora": LORA, **GENERATION, "engine": {"num_engines": 1}})
    prompt = [engine.module.tokenizer.encode("add 3 pens")]
    with pytest.raises(StaleEngineError, match="version None"):
        engine.generate(prompt, True, [1], expected_version=3)
    state = {k: v + 0.01 for k, v in engine.module.get_state().items()}
    chunks = [dict(list(state.items())[: len(state) // 2]), dict(list(state.items())[len(state) // 2 :])]
    engine.set_weights(chunks[0], None)  # a push in two chunks: the version comes with the last
    with pytest.raises(StaleEngineError):
        engine.generate(prompt, True, [1], expected_version=3)
    engine.set_weights(chunks[1], 3)
    assert len(engine.generate(prompt, True, [1], expected_version=3)) == 1
    [sync] = engine.pop_weight_sync_stats()  # one push, whatever its chunks
    assert sync["bytes"] == sum(v.numel() * v.element_size() for v in state.values())


def test_full_weights_stream_in_bounded_chunks_of_whole_layers(tiny_model):
    from rllib_seeupo.llm.engine_actor import state_bytes, weight_chunks

    module = LLMRLModule(observation_space=AnyText(10**6), action_space=AnyText(4000), inference_only=True,
                         model_config={"model": tiny_model})
    state = module.get_state()
    layer = state_bytes({k: v for k, v in state.items() if ".layers.0." in k})
    chunks = weight_chunks(state, limit=2 * layer)
    assert [k for c in chunks for k in c] == list(state)  # every tensor once, in order
    assert len(chunks) > 1 and all(state_bytes(c) <= 2 * layer or len(c) == 1 for c in chunks)
    for chunk in chunks:  # a layer is never split
        layers = {k.split(".layers.")[1].split(".")[0] for k in chunk if ".layers." in k}
        for i in layers:
            assert {k for k in state if f".layers.{i}." in k} <= set(chunk)
    assert weight_chunks(state, limit=1 << 40) == [state]


@pytest.mark.parametrize("engine, message", [
    ({"num_engines": -1}, "engine.num_engines must be an int >= 0"),
    ({"num_gpus_per_engine": 1.5}, "engine.num_gpus_per_engine must be a fraction"),
    ({"placement": "mixed"}, "engine.placement must be one of"),
    ({"placement": "colocated"}, "colocated.*needs engine.num_engines >= 1"),
    ({"num_engines": 1, "num_gpus_per_engine": 2}, "transformers engine uses one GPU"),
    ({"num_engines": 1, "num_gpus_per_engine": 0.5, "placement": "colocated"},
     "num_gpus_per_engine must be 0 with placement 'colocated'"),
    ({"kind": "vllm", "num_engines": 1, "placement": "colocated"}, "gpu_memory_utilization must be set below 1"),
    ({"kind": "vllm", "num_engines": 1, "num_gpus_per_engine": 1, "tensor_parallel_size": 2},
     "tensor_parallel_size is 2, but engine.num_gpus_per_engine"),
])
def test_bad_engine_actor_settings_name_the_setting(engine, message):
    from rllib_seeupo.llm.module import checked_engine

    with pytest.raises(ValueError, match=message):
        checked_engine({"kind": "transformers", **engine})
