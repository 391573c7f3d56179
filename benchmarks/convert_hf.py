"""Time and peak RSS of `convert --from hf` on a 2B-4T-shaped packed checkpoint, against the
bound that docs and issue 13 set: output file + largest tensor + 20%.

    .venv/bin/python benchmarks/convert_hf.py [--type I2_S] [--layers 30] [--dir DIR]
        [--json convert-hf.json]

The checkpoint is made here with pybitnet's own tools (seeded random packed weights with
microsoft/bitnet-b1.58-2B-4T's shapes and config.json, a bf16 embedding, a small byte-level BPE
tokenizer padded to the embedding's rows) and written tensor by tensor. The conversion runs in a
child process, so its peak RSS (ru_maxrss) is the conversion's alone; mapped checkpoint pages it
touches count in it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel

from pybitnet import formats
from pybitnet.convert.safetensors import write_safetensors
from pybitnet.gguf import open_gguf

CONFIG = {  # microsoft/bitnet-b1.58-2B-4T's config.json, as far as the conversion reads it
    "architectures": ["BitNetForCausalLM"], "model_type": "bitnet", "hidden_act": "relu2",
    "hidden_size": 2560, "intermediate_size": 6912, "num_hidden_layers": 30,
    "num_attention_heads": 20, "num_key_value_heads": 5, "vocab_size": 128256,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                            "quantization_mode": "offline"},
}  # fmt: skip
# every byte whose four 2-bit codes are ternary (0, 1, 2): random packed weights without code 3
TERNARY_BYTES = np.array([b for b in range(256) if all((b >> s) & 3 != 3 for s in (0, 2, 4, 6))])


def checkpoint_tensors(c: dict, rng: np.random.Generator) -> list:
    dim, ffn, hd = (
        c["hidden_size"],
        c["intermediate_size"],
        c["hidden_size"] // c["num_attention_heads"],
    )
    kv = c["num_key_value_heads"] * hd

    def bf16(shape, low=0.5, high=1.5):
        return lambda: formats.quantize("BF16", rng.uniform(low, high, shape)).view("<u2")

    def packed(shape):
        return lambda: rng.choice(TERNARY_BYTES, (shape[0] // 4, shape[1])).astype(np.uint8)

    def embedding():
        out = np.empty((c["vocab_size"], dim), "<u2")
        for i in range(0, len(out), 8192):
            rows = min(8192, len(out) - i)
            out[i : i + rows] = (
                formats.quantize("BF16", rng.normal(0, 0.06, (rows, dim)))
                .view("<u2")
                .reshape(rows, dim)
            )
        return out

    tensors = [
        ("model.embed_tokens.weight", "BF16", (c["vocab_size"], dim), embedding),
        ("model.norm.weight", "BF16", (dim,), bf16((dim,))),
    ]
    linears = {
        "self_attn.q_proj": (dim, dim),
        "self_attn.k_proj": (kv, dim),
        "self_attn.v_proj": (kv, dim),
        "self_attn.o_proj": (dim, dim),
        "mlp.gate_proj": (ffn, dim),
        "mlp.up_proj": (ffn, dim),
        "mlp.down_proj": (dim, ffn),
    }
    norms = {
        "input_layernorm": dim,
        "post_attention_layernorm": dim,
        "self_attn.attn_sub_norm": dim,
        "mlp.ffn_sub_norm": ffn,
    }
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        tensors += [
            (p + n + ".weight", "BF16", (size,), bf16((size,))) for n, size in norms.items()
        ]
        for n, shape in linears.items():
            tensors.append((p + n + ".weight", "U8", (shape[0] // 4, shape[1]), packed(shape)))
            tensors.append((p + n + ".weight_scale", "BF16", (1,), bf16((1,), 1.0, 3.0)))
    return tensors


def make_checkpoint(folder: Path, layers: int, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = {**CONFIG, "num_hidden_layers": layers}
    (folder / "config.json").write_text(json.dumps(config))
    write_safetensors(
        folder / "model.safetensors", checkpoint_tensors(config, np.random.default_rng(seed))
    )
    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    vocab["Ġt"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "t")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    tok.save(str(folder / "tokenizer.json"))
    special = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(special))


def convert_in_child(folder: Path, out: Path, wtype: str) -> tuple[float, int]:
    """(seconds, peak RSS bytes) of the conversion, run alone in a child process."""
    code = (
        "import sys; from pybitnet.convert import convert; "
        "convert('hf', sys.argv[1], sys.argv[2], weight_type=sys.argv[3])"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(folder), str(out), wtype], check=True)
    seconds = time.perf_counter() - start
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--type", default="I2_S", help="GGUF type of the ternary weights")
    p.add_argument("--layers", type=int, default=30, help="blocks (2B-4T: 30)")
    p.add_argument("--dir", type=Path, help="work folder (default: a temporary one)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder, out = Path(tmp) / "checkpoint", Path(tmp) / "out.gguf"
        start = time.perf_counter()
        make_checkpoint(folder, args.layers)
        made = time.perf_counter() - start
        seconds, rss = convert_in_child(folder, out, args.type)
        f = open_gguf(out)
        largest = max(f.tensor_bytes(name).nbytes for name in f.tensors)
        result = {
            "type": args.type, "layers": args.layers,
            "checkpoint_bytes": (folder / "model.safetensors").stat().st_size,
            "output_bytes": out.stat().st_size, "largest_tensor_bytes": largest,
            "seconds": round(seconds, 2), "peak_rss_bytes": rss,
            "bound_bytes": int((out.stat().st_size + largest) * 1.2),
        }  # fmt: skip
    mb = 1e6
    print(f"checkpoint made in {made:.1f} s: {result['checkpoint_bytes'] / mb:.0f} MB")
    print(
        f"convert --from hf --type {args.type}: {seconds:.1f} s, peak RSS "
        f"{rss / mb:.0f} MB (bound: output {result['output_bytes'] / mb:.0f} MB + largest tensor "
        f"{largest / mb:.0f} MB + 20% = {result['bound_bytes'] / mb:.0f} MB)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
