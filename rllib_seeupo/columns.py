"""Batch columns shared by the algorithm, the learner and the modules (no imports, so the
Ray-free compute core can use them too)."""

RESPONSE_MASK = "response_mask"  # (B, L) bool: real response tokens
BEHAVIOUR_LOGP = "behaviour_logp"  # (B, L) log-probs recorded at sampling time
RESPONSE_LOGP = "response_logp"  # (B, L) forward_train output under the current params
RESPONSE_ENTROPY = "response_entropy"  # (B, L) forward_train output, policy entropy per token
# An LLM module's turn rows (LLMRLModule.collate_turn_rows).
PROMPT_IDS = "prompt_ids"  # (B, P) left-padded
PROMPT_MASK = "prompt_mask"  # (B, P)
RESPONSE_IDS = "response_ids"  # (B, L) right-padded
