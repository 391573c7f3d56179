"""The tokenizer files of the HF fixtures: a tiny byte-level BPE of Llama-3's shape.

Imported by scripts/record_hf_fixtures.py (run in the oracle environment; see
tests/fixtures/hf/README.md). Trained by the `tokenizers` package on a few lines of text, with
Llama-3's pre-tokenizer, special tokens, BOS rule, chat template and end-of-turn id.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import tokenizers
from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers

# Llama-3's pre-tokenizer split (the regex of Meta's tokenizer.json, llama.cpp's `llama-bpe`).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"]
SPECIALS += ["<|eot_id|>"]
CONTEXT = 256
VOCAB = 448  # embedding rows; the tokenizer fills it with reserved specials, as Llama-3 does
# A chat template of 2B-4T's shape ("Role: content<|eot_id|>", BOS first, "Assistant: " to end).
CHAT_BITNET = (
    "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)
# Llama-3's shape: header ids around the role, "\n\n", content, <|eot_id|>.
CHAT_LLAMA = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}"
    "<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CORPUS = [
    "Once upon a time, a little cat sat on the warm mat and watched the rain fall.",
    "The quick brown fox jumps over the lazy dog; the dog doesn't mind, it's sleeping.",
    "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(add(i, 42))\n",
    "Numbers: 1, 22, 333, 4444, 55555, 3.14159, 2026-12-06, 0x1F, 1e-5.",
    "Unicode: café, naïve, Straße, 東京, Москва, ελληνικά, emoji 🙂 and tabs\tand  spaces.",
    "We'll see; they're here, you've won, I'm sure, he'd go, she'll stay.",
    "User: What is a ternary weight?\nAssistant: A weight in {-1, 0, +1} times a scale.",
    "BitNet b1.58 quantizes weights by absmean and activations by absmax per token.",
]


@functools.cache
def bpe_tokenizer() -> tokenizers.Tokenizer:
    """A byte-level BPE trained on CORPUS with Llama-3's pre-tokenizer, specials and BOS rule."""
    tok = tokenizers.Tokenizer(models.BPE(ignore_merges=True))
    split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(
        CORPUS * 4, trainers.BpeTrainer(vocab_size=VOCAB - 32, initial_alphabet=alphabet)
    )
    n_reserved = VOCAB - tok.get_vocab_size() - len(SPECIALS)
    tok.add_special_tokens(
        SPECIALS + [f"<|reserved_special_token_{i}|>" for i in range(n_reserved)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
        special_tokens=[("<|begin_of_text|>", tok.token_to_id(SPECIALS[0]))],
    )
    return tok


def special_ids() -> tuple[int, int, int]:
    """Begin of text, end of text, end of turn."""
    return tuple(bpe_tokenizer().token_to_id(SPECIALS[i]) for i in (0, 1, 4))


def write_tokenizer(path: Path, chat_template: str) -> None:
    """tokenizer.json and a tokenizer_config.json of Llama-3's shape (BOS, EOS, chat template)."""
    tok = bpe_tokenizer()
    tok.save(str(path / "tokenizer.json"))
    flags = dict(lstrip=False, normalized=False, rstrip=False, single_word=False, special=True)
    decoder = tok.get_added_tokens_decoder()
    added = {str(i): {"content": decoder[i].content, **flags} for i in sorted(decoder)}
    config = {
        "added_tokens_decoder": added,
        "bos_token": SPECIALS[0],
        "eos_token": SPECIALS[1],
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": True,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": CONTEXT,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    dump(path / "tokenizer_config.json", config)


def write_generation_config(path: Path) -> None:
    """After save_pretrained (which writes its own): end of text and end of turn both stop."""
    bos, eos, eot = special_ids()
    dump(
        path / "generation_config.json",
        {"bos_token_id": bos, "do_sample": False, "eos_token_id": [eos, eot]},
    )


def dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
