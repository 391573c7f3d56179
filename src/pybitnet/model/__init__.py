"""Models: config from GGUF metadata, weights, and the numpy reference forward pass."""

from pybitnet.model.config import ARCHITECTURES, ModelConfig
from pybitnet.model.convert import default_model_path
from pybitnet.model.reference import KVCache, ReferenceModel
from pybitnet.model.weights import Weights

__all__ = [
    "ARCHITECTURES",
    "KVCache",
    "ModelConfig",
    "ReferenceModel",
    "Weights",
    "default_model_path",
]
