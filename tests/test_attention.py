"""``sdpa_gqa`` computes what transformers' own attention computes, values and gradients,
with left padding (masks) and with a KV cache (decode steps)."""

import torch
from transformers import AutoModelForCausalLM

from rllib_seeupo.llm.attention import NAME


def test_sdpa_gqa_matches_eager_attention_with_padding_cache_and_gradients(tiny_model):
    torch.manual_seed(0)
    models = {impl: AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=impl) for impl in ("eager", NAME)}
    assert models[NAME].config.num_key_value_heads < models[NAME].config.num_attention_heads  # grouped-query
    ids = torch.randint(5, 200, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[1, :1] = 0
    out, grads = {}, {}
    for impl, model in models.items():
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits[mask.bool()].square().mean().backward()
        grads[impl] = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
        # Decode: two more tokens through the cache.
        with torch.no_grad():
            cached = model(input_ids=ids[:, :10], attention_mask=mask[:, :10], use_cache=True)
            step = model(input_ids=ids[:, 10:], attention_mask=mask, past_key_values=cached.past_key_values)
        out[impl] = (logits.detach(), step.logits)
    full, steps = out["eager"], out[NAME]
    rows = mask.bool()
    assert torch.allclose(full[0][rows], steps[0][rows], atol=1e-5)
    assert torch.allclose(full[1], steps[1], atol=1e-5)
    assert torch.allclose(out[NAME][1], out[NAME][0][:, 10:], atol=1e-5)  # cache == no cache
    assert torch.allclose(grads["eager"], grads[NAME], atol=1e-6)
