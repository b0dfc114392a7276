"""Model FLOP utilisation of a tag-training step on a random-weight Llama of a real model's shape (issue 15).

The model is frozen; a `<SMILES>` domain tag, a `<QED>` function tag and its regression head train, without
span reuse (every step runs the whole input). A step is the forward pass and the backward pass to the inputs:
no weight gradients, so about 2N FLOPs a token forward and 2N backward, 4N in all, N being the parameters the
tokens pass through (embeddings excluded). That is the MFU the issue asks for; the attention scores' own
FLOPs (which grow with the length) are reported beside it.

    python benchmarks/mfu.py --shape llama-7b --device cuda --dtype bfloat16 --batch-size 8 --seq-len 512
    python benchmarks/mfu.py --shape 64,2,4,128 --steps 2 --warmup 1 --out /tmp/mfu   # a CPU smoke run

The peak is the device's dense bf16 / fp16 tensor rate, looked up by name (`--peak-tflops` overrides it); on
a CPU there is none to look up, so MFU is left out unless given. Results: `<out>.json` and `<out>.md`.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from domainlm import io

RESULTS = Path(__file__).parent / "results"
# hidden, layers, attention heads, MLP width (key/value heads = attention heads; vocabulary 32,000)
SHAPES = {"llama-7b": (4096, 32, 32, 11008), "llama-13b": (5120, 40, 40, 13824)}
# Dense (no sparsity) bf16 / fp16 tensor-core peak, TFLOP/s, from the vendors' data sheets.
PEAK_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.5, "H100": 989.4}
PEAK_TFLOPS |= {"A100": 312.0, "L40S": 362.1, "A10G": 70.0, "L4": 121.0}
TEMPLATE = "The SMILES of the molecule is <SMILES> {smiles}. QED: <QED>"


def parse_shape(text: str) -> tuple[int, int, int, int]:
    if text in SHAPES:
        return SHAPES[text]
    try:
        hidden, layers, heads, mlp = (int(x) for x in text.split(","))
    except ValueError:
        raise SystemExit(
            f"--shape: one of {', '.join(SHAPES)} or HIDDEN,LAYERS,HEADS,MLP; got {text!r}"
        ) from None
    return hidden, layers, heads, mlp


def peak_tflops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    if given:
        return given, "given"
    if device.type != "cuda":
        return None, "none known for a CPU"
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):  # the most specific name first
        if key in name:
            return PEAK_TFLOPS[key], f"{name}: data sheet"
    return None, f"{name}: not in the table (pass --peak-tflops)"


def build(shape, dtype: torch.dtype, device: torch.device):
    """A TaggedModel over a random Llama of `shape`, made directly on the device in `dtype`."""
    from transformers import LlamaForCausalLM

    from domainlm.engine.model import TaggedModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_models import tiny_config, tiny_tokenizer

    hidden, layers, heads, mlp = shape
    config = tiny_config("llama", 32000, hidden, layers, heads, intermediate=mlp, kv_heads=heads)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # 7B weights made in fp32 first would need twice the memory
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.eval()
    tm = TaggedModel(model, tiny_tokenizer("llama"), name=f"random Llama {hidden}x{layers}")
    tm.add_tag("SMILES", char_level=True)
    tm.add_tag("QED", "function", head="regression", label_mean=0.5, label_std=0.2)
    tm.set_trainable(names=["QED"])
    return tm.to(device), config


def matmul_params(config) -> int:
    """Parameters a token's activations multiply through: attention and MLP weights of every layer."""
    h, i, kv = config.hidden_size, config.intermediate_size, config.num_key_value_heads
    head_dim = h // config.num_attention_heads
    return config.num_hidden_layers * (2 * h * h + 2 * h * kv * head_dim + 3 * h * i)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama-7b", help=f"{', '.join(SHAPES)} or HIDDEN,LAYERS,HEADS,MLP")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512, help="tokens an input holds, tags included")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (kernels, allocator)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--peak-tflops", type=float, help="the device's peak for --dtype (default: looked up)")
    ap.add_argument("--out", default=str(RESULTS / "mfu"))
    args = ap.parse_args(argv)
    command = shlex.join(["python", "benchmarks/mfu.py", *(argv if argv is not None else sys.argv[1:])])
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    tm, config = build(parse_shape(args.shape), dtype, device)

    # One character a token: a SMILES of the length that fills --seq-len with the template and both tags.
    overhead = len(tm.encoder.encode(TEMPLATE.format(smiles="C"), 0).ids) - 1
    smiles = ("CC(=O)Nc1ccc(O)cc1" * args.seq_len)[: max(1, args.seq_len - overhead)]
    texts = [TEMPLATE.format(smiles=smiles)] * args.batch_size
    batch = {
        k: v.to(device) if torch.is_tensor(v) else v for k, v in tm.encode(texts, [0.5] * len(texts)).items()
    }
    seq = int(batch["attention_mask"].shape[1])
    trainable = [p for p in tm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = tm(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - started) / args.steps

    tokens = args.batch_size * seq
    n = matmul_params(config)
    model_flops = 4 * n * tokens  # forward 2N + backward to the inputs 2N, per token
    # scores and weighted values, causal (half the square), forward 2 x 2 x s^2/2 x h a layer; backward twice
    attention_flops = 3 * 2 * seq * seq * config.hidden_size * config.num_hidden_layers * args.batch_size
    peak, peak_source = peak_tflops(device, args.peak_tflops)
    record = {
        "command": command,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "dtype": args.dtype,
        "shape": dict(
            hidden=config.hidden_size,
            layers=config.num_hidden_layers,
            heads=config.num_attention_heads,
            mlp=config.intermediate_size,
        ),
        "matmul_params": n,
        "batch_size": args.batch_size,
        "seq_len": seq,
        "step_seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "model_tflops_per_s": model_flops / seconds / 1e12,
        "with_attention_tflops_per_s": (model_flops + attention_flops) / seconds / 1e12,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "mfu": model_flops / seconds / 1e12 / peak if peak else None,
        "mfu_with_attention": (model_flops + attention_flops) / seconds / 1e12 / peak if peak else None,
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    out = Path(args.out)
    io.write_json(out.with_suffix(".json"), record)
    io.write_text(out.with_suffix(".md"), markdown(record))
    print(markdown(record))
    return 0


def markdown(r: dict) -> str:
    mfu = "n/a (no peak known)" if r["mfu"] is None else f"**{r['mfu']:.1%}**"
    with_attention = (
        "" if r["mfu_with_attention"] is None else f" ({r['mfu_with_attention']:.1%} counting attention)"
    )
    s = r["shape"]
    return "\n".join(
        [
            f"# Tag-training MFU: random Llama {s['hidden']} x {s['layers']} layers "
            f"({r['matmul_params'] / 1e9:.2f}B matmul parameters), {r['dtype']}, {r['device']}",
            "",
            f"    {r['command']}",
            "",
            f"Batch {r['batch_size']} x {r['seq_len']} tokens; frozen model, tags and head train, no span "
            "reuse; 4N FLOPs a token (forward, and backward to the inputs only).",
            "",
            "| step s | tokens/s | model TFLOP/s | with attention | peak TFLOP/s | MFU | peak memory GB |",
            "|---|---|---|---|---|---|---|",
            f"| {r['step_seconds']:.3f} | {r['tokens_per_s']:,.0f} | {r['model_tflops_per_s']:.1f} | "
            f"{r['with_attention_tflops_per_s']:.1f} | {r['peak_tflops'] or 'n/a'} ({r['peak_source']}) | "
            f"{mfu}{with_attention} | "
            + (f"{r['peak_memory_gb']:.1f}" if r["peak_memory_gb"] is not None else "n/a")
            + " |",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
