"""Training refuses, before its first step, a batch that cannot fit in a CPU's free memory (the kernel would
kill it without a word), and warns when it might not."""

from types import SimpleNamespace

import psutil
import pytest
from transformers import LlamaConfig

from domainlm.errors import DomainLMError
from domainlm.memory import activation_bytes, check_batches

SMOLLM2 = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9)
LENGTHS = [60] * 15 + [2100]  # one 2,000-character SMILES among short ones


def free(monkeypatch, gb: float) -> None:
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=int(gb * 2**30)))


def test_the_long_molecule_batch_is_refused_with_what_to_do(monkeypatch):
    free(monkeypatch, 22)
    batches = [list(range(8)), list(range(8, 16))]
    expected = r"lora on qed: .*8 inputs, up to 2,100 tokens.*--max-span-tokens"
    with pytest.raises(DomainLMError, match=expected):
        check_batches(SMOLLM2, batches, LENGTHS, "cpu", print, "lora on qed")


def test_short_batches_pass_and_a_gpu_is_left_to_its_own_errors(monkeypatch):
    free(monkeypatch, 22)
    lines = []
    check_batches(SMOLLM2, [list(range(8))], [60] * 8, "cpu", lines.append, "x")
    check_batches(SMOLLM2, [list(range(8, 16))], LENGTHS, "cuda:0", lines.append, "x")
    assert lines == []


def test_a_batch_just_over_the_free_memory_is_a_warning(monkeypatch):
    need = activation_bytes(SMOLLM2, 8, 600)
    free(monkeypatch, 0.8 * need / 2**30)
    lines = []
    check_batches(SMOLLM2, [list(range(8))], [600] * 8, "cpu", lines.append, "x")
    assert len(lines) == 1 and lines[0].startswith("warning: x: the largest training batch")
