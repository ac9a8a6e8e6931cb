"""The one learner-connector piece that RLlib's built-in PPO needs to train ``LLMRLModule``.

Exploration records, per turn, the prompt ids, the response ids and their log-probs as
arrays of varying length. RLlib's default learner pipeline stacks every column into one
array, which fails on ragged rows. ``PadTurnColumns`` runs first in the learner pipeline
(``config.learners(learner_connector=...)``; ``rllib_seeupo.ppo_config`` adds it) and adds
those columns already padded to one width for the whole batch (the layout of
``LLMRLModule.collate_turn_rows``), so the default pieces leave them alone. It also adds
``Columns.ACTION_DIST_INPUTS`` from the recorded ``Columns.ACTION_LOGP``, which PPO's loss
reads for the sampling policy. Episodes without prompt ids (a tabular module) pass through.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns

from rllib_seeupo.llm.module import PROMPT_IDS, PROMPT_MASK, RESPONSE_IDS
from rllib_seeupo.modules.api import BEHAVIOUR_LOGP, RESPONSE_MASK


class PadTurnColumns(ConnectorV2):
    """Learner connector: adds, per timestep of every single-agent episode that has
    ``prompt_ids`` in its extra model outputs,

    - ``prompt_ids`` ``(P,)`` left-padded, ``prompt_mask`` ``(P,)``,
    - ``response_ids`` ``(L,)`` right-padded, ``response_mask`` ``(L,)``,
    - ``behaviour_logp`` ``(L,)`` (per-token log-probs recorded at sampling time),
    - ``action_dist_inputs`` ``(1,)``: the recorded sequence log-prob,

    with P and L the widest prompt and response of the whole batch. Needs episodes whose
    data are lists (``episodes_to_numpy=False``): ragged rows cannot become one array.
    """

    def __call__(
        self,
        *,
        rl_module: Any,
        batch: dict[str, Any],
        episodes: list[Any],
        explore: bool | None = None,
        shared_data: dict | None = None,
        **kwargs,
    ) -> Any:
        per_episode = []
        for episode in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            n = len(episode)
            if n == 0 or PROMPT_IDS not in episode.extra_model_outputs:
                continue
            steps = slice(0, n)
            per_episode.append(
                (
                    episode,
                    [np.asarray(p) for p in episode.get_extra_model_outputs(key=PROMPT_IDS, indices=steps)],
                    [np.asarray(y) for y in episode.get_extra_model_outputs(key=RESPONSE_IDS, indices=steps)],
                    [np.asarray(b) for b in episode.get_extra_model_outputs(key=BEHAVIOUR_LOGP, indices=steps)],
                    episode.get_extra_model_outputs(key=Columns.ACTION_LOGP, indices=steps),
                )
            )
        if not per_episode:
            return batch
        P = max(len(p) for _, prompts, *_ in per_episode for p in prompts)
        L = max(1, max(len(y) for _, _, responses, *_ in per_episode for y in responses))
        for episode, prompts, responses, behaviour, action_logp in per_episode:
            n = len(prompts)
            columns: dict[str, list[np.ndarray]] = {
                PROMPT_IDS: [], PROMPT_MASK: [], RESPONSE_IDS: [], RESPONSE_MASK: [], BEHAVIOUR_LOGP: [],
                Columns.ACTION_DIST_INPUTS: [],
            }
            for p, y, b, logp in zip(prompts, responses, behaviour, action_logp):
                ids, mask = np.zeros(P, np.int64), np.zeros(P, bool)
                ids[P - len(p) :], mask[P - len(p) :] = p, True
                columns[PROMPT_IDS].append(ids)
                columns[PROMPT_MASK].append(mask)
                ids, mask, logps = np.zeros(L, np.int64), np.zeros(L, bool), np.zeros(L, np.float32)
                ids[: len(y)], mask[: len(y)], logps[: len(b)] = y, True, b
                columns[RESPONSE_IDS].append(ids)
                columns[RESPONSE_MASK].append(mask)
                columns[BEHAVIOUR_LOGP].append(logps)
                columns[Columns.ACTION_DIST_INPUTS].append(np.asarray([logp], np.float32))
            for column, items in columns.items():
                self.add_n_batch_items(batch, column, items_to_add=items, num_items=n, single_agent_episode=episode)
        return batch
