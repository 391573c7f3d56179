"""pybitnet: inference for ternary (BitNet b1.58) language models.

`pybitnet.load(path=None) -> Model` (None: the embedded TinyStories model).
"""

__version__ = "0.1.0"
__all__ = ["Model", "load"]


def __getattr__(name: str):
    # Lazy, so that `import pybitnet` (and the CLI's start) stays cheap.
    if name in __all__:
        from pybitnet import generate

        return getattr(generate, name)
    raise AttributeError(f"module 'pybitnet' has no attribute {name!r}")
