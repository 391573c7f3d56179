"""Build tiny Hugging Face ternary checkpoints with transformers and record its goldens.

Run by hand in the oracle environment (torch + transformers, never a dependency of pybitnet or
its tests; see tests/fixtures/hf/README.md for the exact versions):

    TORCH_COMPILE_DISABLE=1 HF_HUB_OFFLINE=1 /work/hf-env/bin/python scripts/record_hf_fixtures.py

Each fixture is written by transformers' own classes (`save_pretrained`; packed layouts through
`integrations.bitnet.pack_weights`) in the layout its family publishes, then loaded back with
`AutoModelForCausalLM.from_pretrained` so the recorded logits are what transformers computes from
the files we commit. Writes tests/fixtures/hf/<name>/ and tests/fixtures/hf/goldens.json.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import tokenizers
import torch
import transformers
from hf_fixture_tokenizer import (
    CHAT_BITNET,
    CHAT_LLAMA,
    CONTEXT,
    VOCAB,
    dump,
    special_ids,
    write_generation_config,
    write_tokenizer,
)
from transformers import AutoModelForCausalLM, AutoTokenizer, BitNetConfig, LlamaConfig
from transformers.integrations.bitnet import pack_weights, replace_with_bitnet_linear
from transformers.utils.quantization_config import BitNetQuantConfig

ONLINE = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}
OFFLINE = dict(ONLINE, quantization_mode="offline")  # 2B-4T's packed config
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "hf"
SCRIPT = "scripts/record_hf_fixtures.py"
SEED = 20261206
DIMS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
DIMS |= dict(num_key_value_heads=2, max_position_embeddings=CONTEXT, rms_norm_eps=1e-5)
DIMS |= dict(vocab_size=VOCAB)
ORACLES = {  # keyed by: is the oracle folder the committed one?
    True: "AutoModelForCausalLM.from_pretrained(this folder), float32",
    False: "the same tensors under BitNet names, BitNetForCausalLM(silu), AutoBitLinear online",
}
# Candidates per slot: the first whose result is stable under float64 is recorded (see stable()).
TEXTS = [["The little cat sat on the", "A little cat sat on the", "The dog sat on the"]]
TEXTS += [["def f(x):\n    return x * 2  # café 123", "def g(y):\n    return y + 1  # naïve 45"]]
CHATS = ["Is the cat on the mat?", "Where is the cat?", "Is the dog asleep?"]


def tie_free_master(shape: tuple[int, int], dtype: torch.dtype, gen: torch.Generator):
    """Random weights, stored in `dtype`, none of which sits within 1% of absmean's 0.5 boundary,
    so float32 (transformers) and float64 (pybitnet) ternarize them alike."""
    w = (torch.randn(shape, generator=gen) * 0.25).to(dtype).float()
    for _ in range(100):
        r = w.abs() / w.abs().mean()
        near = (r - 0.5).abs() < 0.01
        if not near.any():
            return w.to(dtype)
        w = torch.where(near, w * 1.05, w).to(dtype).float()
    sys.exit("could not move the master weights off absmean's rounding boundary")


def ternarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and scale exactly as transformers' WeightQuant computes them (float32)."""
    w = w.float()
    scale = 1.0 / w.abs().mean().clamp(min=1e-5)
    return (w * scale).round().clamp(-1, 1), 1.0 / scale


def randomize(model, dtype: torch.dtype, seed: int) -> None:
    """Embeddings N(0,1), norms U(0.5,1.5), linears tie-free masters, an untied head N(0,0.5):
    logits of a few units, so most top-1 margins are far above the tests' 0.05."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif name == "lm_head.weight":
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(tie_free_master(tuple(p.shape), dtype, gen).float())
    model.to(dtype)


def packed_copy(master, qc: BitNetQuantConfig, dtype: torch.dtype):
    """The master's ternary weights in transformers' packed layer classes, packed by its own
    pack_weights; weight_scale is a multiplier for AutoBitLinear and a divisor for BitLinear."""
    model = copy.deepcopy(master)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    ternary = {n: ternarize(m.weight) for n, m in linears if n != "lm_head"}
    replace_with_bitnet_linear(model, modules_to_not_convert=["lm_head"], quantization_config=qc)
    for name, (codes, s) in ternary.items():
        module = model.get_submodule(name)
        scale = s if qc.linear_class == "autobitlinear" else 1.0 / s
        packed = pack_weights(codes.clone())
        if qc.linear_class == "autobitlinear":
            module.weight = torch.nn.Parameter(packed, requires_grad=False)
        else:
            module.weight = packed
        module.weight_scale = scale.reshape(1).to(dtype)
    model.config.quantization_config = qc
    return model


def publish_config(path: Path, edit) -> None:
    """Rewrite config.json as the family publishes it (transformers 4.x keys: rope_theta)."""
    config = json.loads((path / "config.json").read_text())
    rope = config.pop("rope_parameters", None) or {}
    config["rope_theta"] = rope.get("rope_theta", config.get("rope_theta"))
    config.pop("dtype", None)
    edit(config)
    dump(path / "config.json", dict(sorted(config.items())))


def new_folders(paths: list[Path], chat_template: str) -> None:
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        write_tokenizer(path, chat_template)


def config_ids() -> dict:
    bos, eos, _ = special_ids()
    return dict(bos_token_id=bos, eos_token_id=eos)


def build_bitnet_2b4t(tmp: Path) -> dict[str, Path]:
    """2B-4T's shape: relu², sub-norms, tied; a bf16 master (online) and its packed sibling."""
    master_dir, packed_dir = OUT / "bitnet-b1.58-2b4t-bf16", OUT / "bitnet-b1.58-2b4t"
    new_folders([master_dir, packed_dir], CHAT_BITNET)
    config = BitNetConfig(**DIMS, **config_ids(), tie_word_embeddings=True)
    config.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
    master = transformers.BitNetForCausalLM(config)
    randomize(master, torch.bfloat16, SEED)
    master.save_pretrained(master_dir)
    publish_config(master_dir, lambda c: c.update(quantization_config=ONLINE))
    qc = BitNetQuantConfig(linear_class="autobitlinear", quantization_mode="offline")
    packed_copy(master, qc, torch.bfloat16).save_pretrained(packed_dir)
    publish_config(packed_dir, lambda c: c.update(quantization_config=OFFLINE))
    for d in (master_dir, packed_dir):
        write_generation_config(d)
    return {master_dir.name: master_dir, packed_dir.name: packed_dir}


def build_llama_158(tmp: Path) -> dict[str, Path]:
    """Falcon3-1.58bit / Llama3-8B-1.58's layout: LlamaForCausalLM, packed BitLinear, untied,
    and sharded (model.safetensors.index.json), as large checkpoints are."""
    path = OUT / "llama-1.58bit"
    new_folders([path], CHAT_LLAMA)
    config = LlamaConfig(**DIMS, **config_ids(), tie_word_embeddings=False)
    config.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
    master = transformers.LlamaForCausalLM(config)
    randomize(master, torch.bfloat16, SEED + 1)
    packed_copy(master, BitNetQuantConfig(), torch.bfloat16).save_pretrained(
        path, max_shard_size="64KB"
    )
    published = {"modules_to_not_convert": ["lm_head"], "quant_method": "bitnet"}
    edit = dict(quantization_config=published, is_bitnet_config=True, pretraining_tp=1)
    publish_config(path, lambda c: c.update(edit))
    write_generation_config(path)
    return {path.name: path}


SUB_NORMS_1BITLLM = {
    ".self_attn.attn_sub_norm.": ".self_attn.inner_attn_ln.",
    ".mlp.ffn_sub_norm.": ".mlp.ffn_layernorm.",
}


def build_1bitllm(tmp: Path) -> dict[str, Path]:
    """1bitLLM's math (SiLU, sub-norms, untied, fp16 master ternarized on load) run by transformers'
    BitNetForCausalLM in online AutoBitLinear mode (the oracle folder, under tmp); the committed
    folder holds the same tensors under 1bitLLM's names and config (model_type llama)."""
    oracle, path = tmp / "1bitllm-oracle", OUT / "1bitllm-bitnet-b1.58"
    new_folders([oracle, path], CHAT_LLAMA)
    config = BitNetConfig(**DIMS, **config_ids(), hidden_act="silu", tie_word_embeddings=False)
    config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    model = transformers.BitNetForCausalLM(config)
    randomize(model, torch.float16, SEED + 2)
    model.save_pretrained(oracle)
    publish_config(oracle, lambda c: c.update(quantization_config=ONLINE))
    tensors = safetensors.torch.load_file(oracle / "model.safetensors")
    renamed = {_rename(k): v for k, v in tensors.items()}
    safetensors.torch.save_file(renamed, path / "model.safetensors", metadata={"format": "pt"})
    published = json.loads((oracle / "config.json").read_text())
    for key in ("quantization_config", "transformers_version"):
        published.pop(key)
    published |= {"architectures": ["BitnetForCausalLM"], "model_type": "llama"}
    published |= {"weight_bits": 1, "input_bits": 8}
    dump(path / "config.json", dict(sorted(published.items())))
    for d in (oracle, path):
        write_generation_config(d)
    return {path.name: oracle}


def _rename(key: str) -> str:
    for old, new in SUB_NORMS_1BITLLM.items():
        key = key.replace(old, new)
    return key


def prompts(path: Path) -> list[list[dict]]:
    """Per slot, candidates: raw texts (BOS added by the post-processor) and a chat rendered by
    transformers' apply_chat_template."""
    tok = AutoTokenizer.from_pretrained(path)
    slots = [[{"text": t, "ids": tok(t)["input_ids"]} for t in texts] for texts in TEXTS]
    chats = [[{"role": "user", "content": c}] for c in CHATS]
    rendered = [
        tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats
    ]
    ids = [tok(r, add_special_tokens=False)["input_ids"] for r in rendered]
    chat = [
        {"chat": c, "rendered": r, "ids": i} for c, r, i in zip(chats, rendered, ids, strict=True)
    ]
    return slots + [chat]


def margins(logits: torch.Tensor) -> list[float]:
    top2 = logits.topk(2, dim=-1).values
    return [_f32(m) for m in (top2[..., 0] - top2[..., 1]).tolist()]


def _f32(x: float) -> float:
    return float(f"{np.float32(x):.9g}")


def load_oracle(oracle_dir: Path):
    model = AutoModelForCausalLM.from_pretrained(
        oracle_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    # transformers keeps some tensors of a pre-quantized checkpoint in its bf16/fp16 despite
    # dtype=float32 (then F.linear refuses the mix); widening them to float32 is exact.
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            t.data = t.data.float()
    theta = json.loads((oracle_dir / "config.json").read_text())["rope_theta"]
    if model.config.rope_parameters["rope_theta"] != theta:
        sys.exit(f"{oracle_dir}: transformers did not read rope_theta {theta}")
    return model


def run(model, ids: torch.Tensor) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """Logits of every prompt position; 16 greedy tokens and the logits that chose them."""
    eos = model.generation_config.eos_token_id
    kw = dict(do_sample=False, max_new_tokens=16, output_scores=True, eos_token_id=eos)
    out = model.generate(ids, **kw, return_dict_in_generate=True, pad_token_id=eos[0])
    greedy = out.sequences[0, ids.shape[1] :].tolist()
    return model(ids).logits[0].double(), greedy, torch.stack(out.scores)[:, 0].double()


def stable(model, model64, ids: torch.Tensor) -> bool:
    """Whether transformers in float64 agrees with itself in float32: cosine 0.99999 at every
    position and the same greedy tokens up to the first near-tie. Activations that land within
    float32 rounding of a quantization boundary (x * 127 / max|x| = k + 0.5) fail this; a
    correct engine in other precision may round them the other way."""
    (a, ga, sa), (b, gb, _) = run(model, ids), run(model64, ids)
    if torch.nn.functional.cosine_similarity(a, b, dim=-1).min() < 0.99999:
        return False
    near = [i for i, m in enumerate(margins(sa)) if m <= 0.05] + [len(ga)]
    return ga[: near[0] + 1] == gb[: near[0] + 1]


def record(oracle_dir: Path) -> tuple[list[dict], torch.nn.Module]:
    """transformers' float32 logits for every prompt position and its greedy continuation."""
    model, results = load_oracle(oracle_dir), []
    model.generation_config.eos_token_id = json.loads(
        (oracle_dir / "generation_config.json").read_text()
    )["eos_token_id"]
    model64 = copy.deepcopy(model)
    for t in [*model64.parameters(), *model64.buffers()]:
        if t.is_floating_point():
            t.data = t.data.double()
    with torch.no_grad():
        for candidates in prompts(oracle_dir):
            ids = [torch.tensor([c["ids"]]) for c in candidates]
            pick = next((i for i, x in enumerate(ids) if stable(model, model64, x)), None)
            if pick is None:
                sys.exit(f"{oracle_dir}: no stable candidate among {candidates}")
            logits, greedy, scores = run(model, ids[pick])
            results.append(
                candidates[pick]
                | {
                    "logits": [[_f32(v) for v in row] for row in logits.tolist()],
                    "margins": margins(logits),
                    "greedy": greedy,
                    "greedy_margins": margins(scores),
                }
            )
    return results, model


def layer_classes(model) -> list[str]:
    """The classes transformers put in place of nn.Linear, with AutoBitLinear's mode."""
    modes = {None: "", True: "(online)", False: "(offline)"}
    bit = [m for m in model.modules() if "BitLinear" in type(m).__name__]
    return sorted({type(m).__name__ + modes[getattr(m, "online_quant", None)] for m in bit})


def cosine(a: list, b: list) -> float:
    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


def versions() -> dict:
    modules = (torch, transformers, tokenizers, safetensors, np)
    return {"python": platform.python_version()} | {m.__name__: m.__version__ for m in modules}


def main() -> None:
    if os.environ.get("TORCH_COMPILE_DISABLE") != "1" or os.environ.get("HF_HUB_OFFLINE") != "1":
        sys.exit(
            "set TORCH_COMPILE_DISABLE=1 (transformers' bitnet functions run eagerly) and "
            "HF_HUB_OFFLINE=1 (nothing is fetched)"
        )
    torch.manual_seed(SEED)
    fixtures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for build in (build_bitnet_2b4t, build_llama_158, build_1bitllm):
            for name, oracle_dir in build(Path(tmp)).items():
                results, model = record(oracle_dir)
                fixtures[name] = {"oracle": ORACLES[oracle_dir.parent == OUT]}
                fixtures[name] |= {"layer_classes": layer_classes(model), "prompts": results}
                print(name, fixtures[name]["layer_classes"], [p["greedy"] for p in results])
    pair = [fixtures[n]["prompts"] for n in ("bitnet-b1.58-2b4t", "bitnet-b1.58-2b4t-bf16")]
    same = [(a, b) for a, b in zip(*pair, strict=True) if a["ids"] == b["ids"]]
    agree = min(cosine(a["logits"], b["logits"]) for a, b in same)
    print(f"packed vs master logits: min cosine {agree:.6f}")
    if agree < 0.999:
        sys.exit("the packed fixture and its master do not compute the same ternary model")
    command = "TORCH_COMPILE_DISABLE=1 HF_HUB_OFFLINE=1 /work/hf-env/bin/python " + SCRIPT
    goldens = {"command": command, "versions": versions(), "fixtures": fixtures}
    text = json.dumps(goldens, ensure_ascii=False, separators=(",", ":"))
    (OUT / "goldens.json").write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
