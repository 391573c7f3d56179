"""pybitnet: inference for ternary (BitNet b1.58) language models."""

__version__ = "0.1.0"
