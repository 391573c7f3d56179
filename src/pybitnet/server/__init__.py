"""The HTTP server: an OpenAI-compatible API with continuous batching, and a chat page.

One module a role, as in llama-cpp-python's server/ and vLLM's entrypoints/openai/: config
(ServerConfig, the KV budget), schemas (request bodies), routes (short functions over what
app.state holds), serving (a request into a Generation, its events into a reply), replies (reply
bodies), errors (OpenAI error objects), middleware, metrics, scheduler (the batch), app
(create_app assembles them), run (`pybitnet serve`); ray_serve (`serve --ray`: replicas on Ray
Serve, imported only then).

from pybitnet.server import ServerConfig, serve
serve(None, port=8080, config=ServerConfig(api_key="secret"))   # the embedded model
"""

from pybitnet.server.app import create_app
from pybitnet.server.config import ServerConfig
from pybitnet.server.errors import APIError
from pybitnet.server.run import serve

__all__ = ["APIError", "ServerConfig", "create_app", "serve"]
