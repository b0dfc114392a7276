"""Variable-length token sequences padded into one batch of tensors."""

from __future__ import annotations

import torch

# Label sequences pad with -100, which the loss ignores; the tag engine's tag slots and segments with -1
# (none); anything else (masks, token types, positions) with 0.
FILL = {"labels": -100, "lm_labels": -100, "tag_index": -1, "segment_ids": -1}


def pad_batch(
    features: list[dict], pad_id: int, *, side: str = "right", device=None
) -> dict[str, torch.Tensor]:
    """Stack examples: list values padded to the longest `input_ids` (ids with `pad_id`) on `side`, scalar
    values (class labels) as they are; an attention mask is added when the examples have none."""
    if "attention_mask" not in features[0]:
        features = [{**f, "attention_mask": [1] * len(f["input_ids"])} for f in features]
    longest = max(len(f["input_ids"]) for f in features)
    fill = {**FILL, "input_ids": pad_id}
    batch = {}
    for key in features[0]:
        values = [f[key] for f in features]
        if not isinstance(values[0], list):
            batch[key] = torch.tensor(values, device=device)
            continue
        rows = []
        for v in values:
            pad = [fill.get(key, 0)] * (longest - len(v))
            rows.append(pad + v if side == "left" else v + pad)
        batch[key] = torch.tensor(rows, device=device)
    return batch


def pad_ids(
    ids: list[list[int]], pad_id: int, *, side: str = "right", device=None
) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask` for bare token-id lists."""
    return pad_batch([{"input_ids": x} for x in ids], pad_id, side=side, device=device)
