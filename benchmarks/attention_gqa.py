"""Grouped-query attention on CPU: key/value heads copied per query head (what transformers'
SDPA path does with a padding mask) vs read in place (``enable_gqa=True``, the project's
``sdpa_gqa``). SmolLM2-135M shapes: 9 query heads, 3 key/value heads, head size 64.

    OMP_NUM_THREADS=1 python benchmarks/attention_gqa.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _timing import median_seconds


def timed(fn, repeats: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    return 1e3 * median_seconds(fn, repeats)


def main() -> None:
    torch.set_num_threads(1)
    batch, heads, kv_heads, cached, dim = 16, 9, 3, 250, 64
    for queries, label in ((1, "decode step"), (60, "60-token chunk")):
        q = torch.randn(batch, heads, queries, dim, requires_grad=True)
        k = torch.randn(batch, kv_heads, cached, dim, requires_grad=True)
        v = torch.randn(batch, kv_heads, cached, dim, requires_grad=True)
        mask = torch.ones(batch, 1, queries, cached, dtype=torch.bool).tril(cached - queries)
        mask[: batch // 3, :, :, :20] = False  # left padding

        def repeat(x):
            return x[:, :, None].expand(batch, kv_heads, heads // kv_heads, cached, dim).reshape(batch, heads, cached, dim)

        def copied():
            return F.scaled_dot_product_attention(q, repeat(k), repeat(v), attn_mask=mask)

        def in_place():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

        assert torch.allclose(copied(), in_place(), atol=1e-6)
        for name, fn in (("copied", copied), ("in place", in_place)):
            with torch.no_grad():
                forward = timed(fn, 50)
            both = timed(lambda: fn().sum().backward(), 10)
            print(f"{label:15s} {name:9s} forward {forward:7.2f} ms   forward+backward {both:7.2f} ms")


if __name__ == "__main__":
    main()
