"""ModelConfig from GGUF metadata: the three architectures and clear errors for bad metadata."""

from __future__ import annotations

import pytest

from pybitnet.errors import ModelError
from pybitnet.model import ModelConfig


def metadata(arch: str = "bitnet", **overrides) -> dict:
    md = {
        "general.architecture": arch,
        f"{arch}.context_length": 256,
        f"{arch}.embedding_length": 64,
        f"{arch}.block_count": 2,
        f"{arch}.feed_forward_length": 128,
        f"{arch}.attention.head_count": 4,
        f"{arch}.attention.head_count_kv": 2,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-5,
        f"{arch}.rope.freq_base": 10000.0,
        "tokenizer.ggml.tokens": ["a"] * 100,
    }
    md.update(
        {
            k if k.startswith(("general.", "tokenizer.")) else f"{arch}.{k}": v
            for k, v in overrides.items()
        }
    )
    return md


@pytest.mark.parametrize(
    ("arch", "activation", "sub_norms", "neox"),
    [
        ("bitnet-b1.58", "relu2", True, True),
        ("bitnet-25", "relu2", True, True),
        ("bitnet", "silu", True, True),
        ("llama", "silu", False, False),
    ],
)
def test_architecture_variants_are_config_fields(arch, activation, sub_norms, neox):
    c = ModelConfig.from_metadata(metadata(arch))
    assert (c.activation, c.sub_norms, c.rope_neox) == (activation, sub_norms, neox)
    assert (c.head_dim, c.rope_dim, c.vocab_size, c.n_kv_heads) == (16, 16, 100, 2)


def test_vocab_size_key_wins_over_token_count():
    assert ModelConfig.from_metadata(metadata(vocab_size=128)).vocab_size == 128


@pytest.mark.parametrize(
    ("md", "message"),
    [
        (metadata("gpt2"), "general.architecture = 'gpt2' is not supported"),
        ({"general.architecture": "bitnet"}, "missing metadata key bitnet.embedding_length"),
        (
            metadata(embedding_length=0),
            "bitnet.embedding_length = 0 must be an integer from 1 to 1048576",
        ),
        (metadata(embedding_length=66), "not a multiple of bitnet.attention.head_count = 4"),
        (metadata(**{"attention.head_count_kv": 3}), "head_count_kv = 3"),
        (metadata(**{"rope.dimension_count": 15}), "rope.dimension_count = 15"),
        (metadata(block_count="2"), "bitnet.block_count = '2' must be an integer from 1 to 4096"),
    ],
)
def test_bad_metadata_is_named(md, message):
    with pytest.raises(ModelError, match="model.gguf") as err:
        ModelConfig.from_metadata(md, "model.gguf")
    assert message in str(err.value)
