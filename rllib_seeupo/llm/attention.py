"""``sdpa_gqa``: transformers' SDPA attention that never copies the key/value heads on CPU.

For grouped-query attention (SmolLM2: 9 query heads share 3 key/value heads) transformers
repeats the key/value heads into new tensors whenever an attention mask is present, which
is every batched call with left padding. On CPU, ``scaled_dot_product_attention(...,
enable_gqa=True)`` computes the same result from the shared heads directly; at batch 16
and 250 cached positions, one decode step's attention ran 6.8x faster and a 60-token
forward+backward 1.4x (``benchmarks/attention_gqa.py``, ``benchmarks/README.md``). Other devices keep
transformers' own SDPA path, whose choice there is tuned for their kernels.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_gqa"


def sdpa_gqa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query (B, H, Q, D), key/value (B, H_kv, K, D), mask (B, 1, Q, K) bool or None ->
    (B, Q, H, D). Same contract as transformers' ``sdpa_attention_forward``."""
    if query.device.type != "cpu" or kwargs.get("position_bias") is not None or kwargs.get("cache") is not None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(query.shape[2] > 1 and attention_mask is None and causal)
    if causal and query.shape[2] != key.shape[2]:  # SDPA's causal mask is top-left aligned
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=causal,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, sdpa_gqa_attention_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)
