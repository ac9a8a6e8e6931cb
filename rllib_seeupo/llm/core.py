"""The LLM policy's compute with only torch, transformers and peft: the batched decode loop,
the packed prompt encoding, and the training forward that gives per-token log-probs of
responses. ``LLMRLModule`` (the RLlib side) inherits it; ``StandalonePolicy`` runs it on a
machine without Ray (``benchmarks/gpu_scale.py``).

A class using ``TokenPolicy`` provides ``model`` (a transformers causal LM, or a peft model
over one), ``tokenizer`` and ``settings`` (``DEFAULTS`` and the module's own keys).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from rllib_seeupo.batching import consecutive_slices
from rllib_seeupo.columns import PROMPT_IDS, PROMPT_MASK, RESPONSE_IDS, RESPONSE_MASK
from rllib_seeupo.llm.kv_cache import copy_packed_rows, reserved_cache

MIN_SHARED_HEAD = 16  # tokens; a shorter common head is not worth a separate pass
# The settings the compute reads (the module adds its own: model, dtype, lora, engine, ...).
COMPUTE_DEFAULTS = {
    "max_prompt_tokens": 2048,
    "max_new_tokens": 64,
    "temperature": 1.0,
    "top_p": 1.0,
    "stop_strings": [],
    "logprob_chunk_tokens": 512,
    "share_prompt_prefix": True,
    "pack_tokens": 512,
}


def collate_prompts_and_responses(prompts: list, responses: list) -> dict[str, np.ndarray]:
    """The turn-row layout: prompts left-padded and responses right-padded, so that every
    response starts at column ``P``.

    Args:
        prompts: ``B`` token-id sequences.
        responses: ``B`` token-id sequences (may be empty).

    Returns:
        ``PROMPT_IDS``/``PROMPT_MASK`` ``(B, P)`` and ``RESPONSE_IDS``/``RESPONSE_MASK``
        ``(B, L)``, ``L >= 1``; int64 ids, bool masks, zeros where padded.
    """
    B, P = len(prompts), max(len(p) for p in prompts)
    L = max(1, max(len(y) for y in responses))
    columns = {PROMPT_IDS: np.zeros((B, P), np.int64), PROMPT_MASK: np.zeros((B, P), bool),
               RESPONSE_IDS: np.zeros((B, L), np.int64), RESPONSE_MASK: np.zeros((B, L), bool)}
    for i, (p, y) in enumerate(zip(prompts, responses, strict=True)):
        columns[PROMPT_IDS][i, P - len(p):] = p
        columns[PROMPT_MASK][i, P - len(p):] = True
        columns[RESPONSE_IDS][i, : len(y)] = y
        columns[RESPONSE_MASK][i, : len(y)] = True
    return columns


class TokenPolicy:
    """Decoding and log-probs of a causal LM over token ids (see the module docstring)."""

    # Half-precision compute over fp32 master weights (full fine-tuning in bf16); None: the
    # model computes in its own dtype.
    autocast_dtype: torch.dtype | None = None
    # Draws the sampled tokens (and vLLM's request seeds); None: torch's global generator.
    sampling_generator: torch.Generator | None = None
    # Set by the learner when the loss has an entropy term; otherwise entropy is a statistic.
    entropy_grad = False

    def decode(self, prompts: list[list[int]], *, sample: bool,
               seeds: list[int] | None = None) -> tuple[list[list[int]], list[list[float]]]:
        """Batched decoding that drops a row from the batch as soon as its response ends.

        transformers' ``generate`` keeps every row until the longest response ends; on a
        batch of tool calls most rows stop after a few tokens, so most of its decode steps
        went into padding. Sampling follows ``generate`` (logits / T, then top-p, then a
        multinomial draw; greedy: argmax of the logits), and each response ends with its
        first eos or with the token that completes a stop string.

        ``seeds`` (one per prompt) draws each row's tokens from a generator of its own, so a
        row's sample does not depend on which other rows share its batch (a shared engine
        actor batches the requests of several env runners); without them the batch draws
        from ``sampling_generator``.

        Returns per prompt the response ids and their log-probs under ``softmax(logits / T)``.
        """
        from transformers import TopPLogitsWarper

        s = self.settings
        temperature = s["temperature"]
        top_p = TopPLogitsWarper(s["top_p"]) if sample and s["top_p"] < 1.0 else None
        eos, stops = self.tokenizer.eos_token_id, s["stop_strings"]
        device = next(self.model.parameters()).device
        # Layout per row: [shared head | left padding | rest of the prompt]; positions count
        # real tokens only, so every row sees exactly its own prompt.
        shared, rest = self._split_shared_head(prompts)
        lengths = [len(r) for r in rest]
        logits, cache = self._encode_prompts(prompts[0][:shared], rest, shared + max(lengths) + s["max_new_tokens"], device)
        _, rest_mask = _left_pad(rest, self.tokenizer.pad_token_id)
        attention = torch.cat([torch.ones((len(prompts), shared), dtype=torch.long), rest_mask.long()], dim=1).to(device)
        next_position = torch.tensor(lengths, device=device) + shared
        rows = torch.arange(len(prompts), device=device)  # the prompt index of each live row
        row_generators = None
        if sample and seeds is not None:
            row_generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]
        responses = [[] for _ in prompts]
        logps = [[] for _ in prompts]
        for step in range(s["max_new_tokens"]):
            scaled = logits.float() / temperature
            if sample:
                warped = top_p(None, scaled) if top_p is not None else scaled
                probs = warped.softmax(-1)
                if row_generators is None:
                    tokens = torch.multinomial(probs, 1, generator=self.sampling_generator).squeeze(-1)
                else:
                    tokens = torch.cat([torch.multinomial(probs[j], 1, generator=row_generators[i])
                                        for j, i in enumerate(rows.tolist())])
            else:
                tokens = logits.argmax(-1)
            token_logp = torch.log_softmax(scaled, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
            live = []
            for j, (i, token, lp) in enumerate(zip(rows.tolist(), tokens.tolist(), token_logp.tolist())):
                responses[i].append(token)
                logps[i].append(lp)
                ended = token == eos or (stops and any(stop in self.tokenizer.decode(responses[i]) for stop in stops))
                if not ended:
                    live.append(j)
            if not live or step == s["max_new_tokens"] - 1:
                break
            if len(live) < len(rows):
                keep = torch.tensor(live, device=device)
                cache.batch_select_indices(keep)
                rows, tokens, attention, next_position = rows[keep], tokens[keep], attention[keep], next_position[keep]
            attention = torch.cat([attention, attention.new_ones((len(rows), 1))], dim=1)
            logits = self.model(
                input_ids=tokens[:, None],
                attention_mask=attention,
                position_ids=next_position[:, None],
                past_key_values=cache,
                use_cache=True,
            ).logits[:, -1]
            next_position = next_position + 1
        return responses, logps

    def _encode_prompts(self, head: list[int], rest: list[list[int]], capacity: int, device):
        """Encode ``head + rest[i]`` for every row without padding: the head once, then the
        rows' remainders in packed sequences (``_packed_forward``; left-padded, a quarter of
        the prefill positions of the rollout benchmark's batches were padding).

        Returns ``(B, V)`` next-token logits and the rows' cache, laid out ``[head | left
        padding | rest of the prompt]`` and reserved to ``capacity`` positions per row."""
        lengths = [len(r) for r in rest]
        packs = consecutive_slices(lengths, self.settings["pack_tokens"])
        packed = reserved_cache(self.model.config, 1, len(head) + max(sum(lengths[p]) for p in packs))
        if head:
            self.model(input_ids=torch.tensor([head], device=device), past_key_values=packed, logits_to_keep=1)
        rows = reserved_cache(self.model.config, len(rest), capacity)
        logits = []
        for pack in packs:
            pack_logits, _ = self._packed_forward(self.model, rest[pack], [1] * len(lengths[pack]), len(head), packed)
            copy_packed_rows(packed, len(head), lengths[pack], max(lengths), rows, pack.start)
            packed.crop(len(head) - packed.get_seq_length())  # the next pack follows the head
            logits.append(pack_logits)
        return torch.cat(logits), rows

    def _packed_forward(self, model, sequences: list[list[int]], keep: list[int], shared: int, cache, *, logits: bool = True):
        """One forward over ``sequences`` packed into a single row after the ``shared`` head
        positions already in ``cache`` (batch 1; None when ``shared`` is 0): each sequence
        attends to the head and, causally, to itself only; positions count from the head.

        Returns, for the last ``keep[i]`` positions of every sequence i in order, ``(K, V)``
        logits (None with ``logits=False``: the output projection is not run) and ``(K, H)``
        final hidden states, ``K = sum(keep)``.

        The mask spans the whole pack, so attention work grows with the square of its length;
        ``pack_tokens`` bounds it (``consecutive_slices``).
        """
        device = next(model.parameters()).device
        lengths = torch.tensor([len(q) for q in sequences], device=device)
        kept = torch.tensor(keep, device=device)
        total = int(lengths.sum())
        row = torch.repeat_interleave(torch.arange(len(sequences), device=device), lengths)
        starts = torch.cumsum(lengths, 0) - lengths
        offset = torch.arange(total, device=device) - starts[row]  # position within its sequence
        mask = None  # one sequence: the model's causal mask after the cached head
        if len(sequences) > 1:
            own = (row[:, None] == row[None, :]) & (offset[None, :] <= offset[:, None])
            mask = torch.cat([own.new_ones((total, shared)), own], dim=1)[None, None]
        keep_row = torch.repeat_interleave(torch.arange(len(sequences), device=device), kept)
        keep_column = torch.arange(int(kept.sum()), device=device) - (torch.cumsum(kept, 0) - kept)[keep_row]
        positions = (starts + lengths - kept)[keep_row] + keep_column
        inputs = {
            "input_ids": torch.tensor([[t for q in sequences for t in q]], device=device),
            "attention_mask": mask,
            "position_ids": (offset + shared)[None],
            "past_key_values": cache,
        }
        if not logits:  # the decoder alone: a cache only when the head is in one
            return None, model.get_decoder()(**inputs, use_cache=cache is not None).last_hidden_state[0, positions]
        with _output_projection_input(model) as captured:
            out = model(**inputs, logits_to_keep=positions)
        return out.logits[0], captured[-1][0]

    def _split_shared_head(self, prompts: list[list[int]], model=None) -> tuple[int, list[list[int]]]:
        """The length of the head all prompts share, worth encoding once (0: none), and
        each prompt's remainder. A batch's prompts usually share the system prompt.
        ``model`` under gradient checkpointing in training mode drops any KV cache, so
        nothing is shared then."""
        shared = 0
        checkpointing = model is not None and model.training and getattr(model, "is_gradient_checkpointing", False)
        if self.settings["share_prompt_prefix"] and len(prompts) > 1 and not checkpointing:
            shared = _common_prefix_length(prompts)
            if shared < MIN_SHARED_HEAD:
                shared = 0
        return shared, [p[shared:] for p in prompts]

    @staticmethod
    def _head_cache(model, head: list[int], device):
        """The KV cache of ``head`` (batch 1), with gradient when enabled: the packed rows of
        a training forward all attend to it."""
        return model(input_ids=torch.tensor([head], device=device), use_cache=True, logits_to_keep=1).past_key_values

    def response_hidden(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(K, H)`` final hidden states of the K positions that predict a response token
        (row by row, in order), ``(K,)`` the row of each, and ``(B, H)`` the final hidden
        state of each prompt's last token.

        No padding is computed (a fifth of the positions of the main job's turn minibatches,
        ``benchmarks/train_forward.py``): the head that every prompt shares runs once, with
        gradient, and each row ``[rest of its prompt | its response but the last token]``
        goes into packed sequences after it (``_packed_forward``). Row i keeps
        ``max(1, response length)`` positions: its prompt's last token and every response
        token but the last (a row with no response keeps its prompt's last).
        """
        prompt, prompt_mask = batch[PROMPT_IDS].long(), batch[PROMPT_MASK].bool()
        response, response_mask = batch[RESPONSE_IDS].long(), batch[RESPONSE_MASK].bool()
        B = response.shape[0]
        prompts = [prompt[i][prompt_mask[i]].tolist() for i in range(B)]
        shared, rest = self._split_shared_head(prompts, model)
        kept = response_mask.sum(-1).clamp(min=1).tolist()
        sequences = [r + response[i, : kept[i] - 1].tolist() for i, r in enumerate(rest)]
        cache = self._head_cache(model, prompts[0][:shared], prompt.device) if shared else None
        hidden = []
        for pack in consecutive_slices([len(q) for q in sequences], self.settings["pack_tokens"]):
            hidden.append(self._packed_forward(model, sequences[pack], kept[pack], shared, cache, logits=False)[1])
            if cache is not None:
                cache.crop(shared - cache.get_seq_length())  # the next pack follows the head
        hidden = torch.cat(hidden)
        kept = torch.tensor(kept, device=prompt.device)
        keep_row = torch.repeat_interleave(torch.arange(B, device=prompt.device), kept)
        first_kept = torch.cumsum(kept, 0) - kept
        return hidden, keep_row, hidden[first_kept]

    def _autocast(self):
        """The learner's half-precision compute over fp32 master weights (full fine-tuning
        with ``dtype: bfloat16``); elsewhere the model computes in its own dtype."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        device = next(self.model.parameters()).device
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def token_logp(self, model, batch: dict[str, torch.Tensor], with_entropy: bool):
        """``(B, L)`` log-probs of the response tokens (zeros at padding), ``(B, L)``
        entropies (or None) and ``(B, H)`` the prompts' last hidden states."""
        with self._autocast():
            hidden, keep_row, prompt_hidden = self.response_hidden(model, batch)
        targets = batch[RESPONSE_IDS].long()
        B, L = targets.shape
        first_kept = torch.searchsorted(keep_row, torch.arange(B, device=keep_row.device))
        keep_column = torch.arange(len(keep_row), device=keep_row.device) - first_kept[keep_row]
        token_targets = targets[keep_row, keep_column]
        projection = model.get_output_embeddings()
        entropy_grad = self.entropy_grad and torch.is_grad_enabled()
        logps, entropies = [], []
        step = self.settings["logprob_chunk_tokens"]
        for start in range(0, len(keep_row), step):
            chunk = (hidden[start : start + step], token_targets[start : start + step])
            if torch.is_grad_enabled() and len(keep_row) > step:
                # The chunk's logits are recomputed in the backward pass instead of kept.
                out = torch.utils.checkpoint.checkpoint(
                    self._chunk_logp, projection, *chunk, with_entropy, entropy_grad, use_reentrant=False
                )
            else:
                out = self._chunk_logp(projection, *chunk, with_entropy, entropy_grad)
            logps.append(out[0])
            entropies.append(out[1])
        index = (keep_row, keep_column)
        logp = torch.cat(logps)
        full_logp = logp.new_zeros((B, L)).index_put(index, logp)
        full_entropy = None
        if with_entropy:
            entropy = torch.cat(entropies)
            full_entropy = entropy.new_zeros((B, L)).index_put(index, entropy)
        return full_logp, full_entropy, prompt_hidden

    def _chunk_logp(self, projection, hidden: torch.Tensor, targets: torch.Tensor, with_entropy: bool, entropy_grad: bool):
        """``(C,)`` log-probs of ``targets`` under ``softmax(projection(hidden) / T)`` and
        ``(C,)`` entropies (an empty tensor without ``with_entropy``), from ``(C, H)``
        hidden states."""
        with self._autocast():
            logits = projection(hidden)
        scaled = torch.log_softmax(logits.float() / self.settings["temperature"], dim=-1)
        logp = scaled.gather(-1, targets[:, None]).squeeze(-1)
        entropy = logp.new_zeros(0)
        if with_entropy:
            with torch.set_grad_enabled(entropy_grad):
                entropy = -(scaled.exp() * scaled).sum(-1)
        return logp, entropy


class StandalonePolicy(TokenPolicy):
    """``TokenPolicy`` over a model and tokenizer given directly (no RLlib, no Ray)."""

    def __init__(self, model, tokenizer, **settings):
        unknown = set(settings) - set(COMPUTE_DEFAULTS)
        if unknown:
            raise ValueError(f"StandalonePolicy: unknown setting(s) {sorted(unknown)}; known: {sorted(COMPUTE_DEFAULTS)}")
        self.model, self.tokenizer = model, tokenizer
        self.settings = {**COMPUTE_DEFAULTS, **settings}


@contextlib.contextmanager
def _output_projection_input(model):
    """Within the block, the list of inputs that ``model``'s output projection (lm_head)
    received: the final hidden states of the positions whose logits are kept."""
    captured = []
    handle = model.get_output_embeddings().register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    try:
        yield captured
    finally:
        handle.remove()


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, W)`` ids and mask with each row right-aligned (left-padded with ``pad``)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = True
    return ids, mask


def _common_prefix_length(sequences: list[list[int]]) -> int:
    """Length of the longest common head, leaving every sequence at least one own token."""
    limit = min(len(s) for s in sequences) - 1
    first = sequences[0]
    n = 0
    while n < limit and all(s[n] == first[n] for s in sequences[1:]):
        n += 1
    return max(n, 0)
