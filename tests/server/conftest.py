from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers.serving import running
from pybitnet.generate import Model, load
from pybitnet.server import ServerConfig, create_app


@pytest.fixture(scope="session")
def model() -> Model:
    """The embedded model: TinyStories 3M, a real trained BitNet b1.58 model."""
    return load()


@pytest.fixture(scope="module")
def base_url(model: Model) -> Iterator[str]:
    """A server with the default configuration, shared by a test module."""
    with running(create_app(model, ServerConfig())) as url:
        yield url
