"""Will the longest training batch fit in memory? Checked before training on the CPU, where running out means
the kernel kills the process without a word, possibly an hour in (a 2,000-character SMILES in a batch of 8
asked a 135M model for more than 24 GB).

The estimate is rough and errs high: per layer and token, backward keeps about eight hidden-sized and four
MLP-width vectors, plus the attention weights (batch x heads x length^2) that attention's CPU path keeps.
"""

from __future__ import annotations

from collections.abc import Callable

from domainlm.errors import DomainLMError

BYTES = 4  # float32 activations
# The estimate errs high by up to about 2x; only a batch that would not fit at half of it is refused.
REFUSE_AT = 2.0


def activation_bytes(config, batch: int, length: int) -> int:
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 768)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 12)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 12)
    mlp = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    per_token = 8 * hidden + 4 * mlp + 2 * heads * length
    return BYTES * batch * length * layers * per_token


def check_batches(
    config, batches: list[list[int]], lengths: list[int], device, log: Callable[[str], None], what: str
) -> None:
    """Refuse (or warn about) training whose longest batch cannot fit in the free memory of a CPU."""
    if str(device).split(":")[0] != "cpu" or not batches:
        return
    import psutil

    worst = max(batches, key=lambda b: activation_bytes(config, len(b), max(lengths[i] for i in b)))
    longest = max(lengths[i] for i in worst)
    need, free = activation_bytes(config, len(worst), longest), psutil.virtual_memory().available
    if need <= free:
        return
    message = (
        f"{what}: the largest training batch ({len(worst)} inputs, up to {longest:,} tokens) needs about "
        f"{need / 2**30:.0f} GB for backward, and {free / 2**30:.0f} GB are free. Cut long data spans "
        "(--overflow truncate --max-span-tokens N) or lower --batch-size"
    )
    if need > REFUSE_AT * free:
        raise DomainLMError(message)
    log(f"warning: {message}; it may not fit")
