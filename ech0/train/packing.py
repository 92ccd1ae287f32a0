"""Padding-free training batches: every row of a step packed into one sequence, attention kept per row.

    from ech0.train.packing import collate_packed, enable
    enable(model)                                  # attention computes each packed row on its own
    batch = collate_packed(examples)               # input_ids/labels/position_ids of shape (1, total)

Positions restart at 0 for every row, the first token of each row never has a label (no loss across
row boundaries), and the ``ech0_varlen`` attention runs causal SDPA on each row's slice, so a packed
step computes the same loss and gradients as a padded one (tested) without spending a single FLOP on
padding, and without the O(total²) cost of one big block-diagonal mask. Anything that is not a packed
training step (generation, padded evaluation) falls through to plain SDPA.
"""

from __future__ import annotations

NAME = "ech0_varlen"


def _segments(position_ids) -> list[tuple[int, int]]:
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    ends = starts[1:] + [position_ids.shape[1]]
    return list(zip(starts, ends))


def varlen_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     position_ids=None, **kwargs):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    packed = module.training and query.shape[0] == 1 and position_ids is not None and query.shape[2] == key.shape[2]
    if not packed:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      position_ids=position_ids, **kwargs)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: repeat K/V heads once for all rows
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    outs = [torch.nn.functional.scaled_dot_product_attention(
        query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True, scale=scaling,
        dropout_p=dropout if module.training else 0.0) for s, e in _segments(position_ids)]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, varlen_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # generation with padding still gets its mask


def enable(model) -> None:
    register()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(NAME)


def collate_packed(examples) -> dict:
    import torch

    ids, labels, pos = [], [], []
    for e in examples:
        ids += e.input_ids
        labels += [-100] + e.labels[1:]  # a row's first token is never predicted from the previous row
        pos += range(len(e))
    return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]), "position_ids": torch.tensor([pos])}
