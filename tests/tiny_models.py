"""Tiny models and tokenizers built in-process, for tests, smoke runs and random-weight speed checks.

Nothing here downloads anything. The tokenizer is word-level over a small English vocabulary plus every
printable character, so SMILES, protein sequences and prompts all tokenise without unknown tokens.
"""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

WORDS = """
the of is a and to in input output molecule smiles protein sequence value score drug answer question context
yes no maybe given quantitative estimate druglikeness descriptor binding affinity combination sensitivity its
translate english french
""".split()

FAMILIES = ("llama", "gpt2", "bert", "qwen2")


def tiny_tokenizer(family: str = "llama") -> PreTrainedTokenizerFast:
    specials = ["<pad>", "<unk>", "<s>", "</s>", "[CLS]", "[SEP]", "[MASK]"]
    chars = [c for c in string.printable if not c.isspace()]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(specials + WORDS + chars))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    # Known words stay whole; anything else splits into single characters.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(_word_or_char_pattern(), behavior="isolated")]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    if family == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="<unk>",
            pad_token="<pad>",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
    if family in {"llama", "qwen2"}:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def _word_or_char_pattern():
    from tokenizers import Regex

    words = "|".join(sorted(WORDS, key=len, reverse=True))
    return Regex(f"(?i:{words})|.")


def tiny_config(
    family: str = "llama",
    vocab_size: int = 256,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    intermediate: int | None = None,
    kv_heads: int | None = None,
):
    """A 2-layer config of the given family; `hidden`/`layers` (and for llama/qwen2 the MLP width and
    key/value heads) can be raised for random-weight speed runs of a real model's shape."""
    from transformers import BertConfig, GPT2Config, LlamaConfig, Qwen2Config

    if family in {"llama", "qwen2"}:
        config_class = LlamaConfig if family == "llama" else Qwen2Config
        return config_class(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=intermediate or hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads or max(1, heads // 2),
            max_position_embeddings=2048,
            bos_token_id=2,
            eos_token_id=3,
            pad_token_id=0,
            tie_word_embeddings=False,
        )
    if family == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_positions=1024,
            bos_token_id=2,
            eos_token_id=3,
            pad_token_id=0,
        )
    if family == "bert":
        return BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=1024,
            pad_token_id=0,
        )
    raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")


def tiny_model(family: str = "llama", seed: int = 0, **config_kw):
    """(model, tokenizer) with random weights: a causal LM for llama/gpt2/qwen2, an encoder for bert."""
    from transformers import AutoModel, AutoModelForCausalLM

    tokenizer = tiny_tokenizer(family)
    config = tiny_config(family, vocab_size=max(256, len(tokenizer)), **config_kw)
    torch.manual_seed(seed)
    cls = AutoModel if family == "bert" else AutoModelForCausalLM
    model = cls.from_config(config)
    model.eval()
    return model, tokenizer


PAIR_TEMPLATE = "The protein sequence is <Protein> {p}. The SMILES of the drug is <SMILES> {s}. Affinity <BA>"
PAIRS = [("MKVLAAGG", "CCO"), ("MKV", "CC(=O)NC1=CC"), ("MKVLAAGG", "N"), ("WYYKKR", "CCO")]


def tagged_pair_model(family: str = "llama"):
    """A TaggedModel with <Protein>, <SMILES> and a <BA> regression head, all moved off their initial values
    (so spans differ and the head is not zero); only <BA> trains."""
    from domainlm.engine.model import TaggedModel

    tm = TaggedModel(*tiny_model(family))
    tm.add_tag("Protein", char_level=True)
    tm.add_tag("SMILES", char_level=True)
    tm.add_tag("BA", "function", head="regression", label_mean=6.0, label_std=1.0)
    torch.manual_seed(0)
    with torch.no_grad():
        tm.heads["BA"].linear.weight.normal_()
        for p in tm.tag_vectors.values():
            p.add_(0.1 * torch.randn_like(p))
    tm.set_trainable(names=["BA"])
    return tm
