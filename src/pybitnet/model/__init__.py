"""The runtime model: config from GGUF metadata, weights, KV caches, and the float64 reference
forward pass (the engine's oracle)."""

from pybitnet.model.cache import CacheSpan, ReferenceCache
from pybitnet.model.config import ARCHITECTURES, ModelConfig
from pybitnet.model.reference import ReferenceModel
from pybitnet.model.weights import Weights

__all__ = [
    "ARCHITECTURES",
    "CacheSpan",
    "ModelConfig",
    "ReferenceCache",
    "ReferenceModel",
    "Weights",
]
