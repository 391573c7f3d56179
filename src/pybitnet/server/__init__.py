"""The HTTP server: an OpenAI-compatible API with continuous batching, and a chat page.

from pybitnet.server import ServerConfig, serve
serve(None, port=8080, config=ServerConfig(api_key="secret"))   # the embedded model
"""

from pybitnet.server.app import create_app
from pybitnet.server.config import ServerConfig
from pybitnet.server.errors import APIError
from pybitnet.server.run import serve

__all__ = ["APIError", "ServerConfig", "create_app", "serve"]
