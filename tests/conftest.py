import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """One Ray session for the whole test run (ray.init costs ~7 s and ~0.7 GB).

    Logical CPUs are oversubscribed so that tests with several env runners and learners
    can be scheduled on a 2-core machine."""
    import ray
    import torch

    torch.set_num_threads(1)
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random Llama with a real BPE tokenizer and ChatML template, built locally."""
    from rllib_seeupo.llm.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")
