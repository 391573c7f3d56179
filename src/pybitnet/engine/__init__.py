"""The fast forward pass: docs/SPEC.md §1 over the native kernels (kernels/), function for function
like the float64 reference (model/reference.py), with a float16 (or float32, q8_0) KV cache
and batched decoding."""

from pybitnet.engine.forward import Engine, EngineCache

__all__ = ["Engine", "EngineCache"]
