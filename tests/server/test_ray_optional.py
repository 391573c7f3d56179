"""Ray is an optional extra: the single-process server never imports it, and `serve --ray`
without it says how to install it, in one line."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

import pybitnet.server
from pybitnet.cli import app


def test_the_single_process_server_does_not_import_ray():
    # A process of its own: this one may have imported Ray for test_ray_serve.py.
    code = (
        "import sys; from pybitnet.cli import app; from pybitnet.generate import load; "
        "from pybitnet.server import create_app; create_app(load()); "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_serve_ray_without_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    # As if never imported (test_ray_serve.py may have): the module, and the package's name.
    monkeypatch.delitem(sys.modules, "pybitnet.server.ray_serve", raising=False)
    monkeypatch.delattr(pybitnet.server, "ray_serve", raising=False)
    result = CliRunner().invoke(app, ["serve", "--ray", "--address", "auto"])
    assert result.exit_code == 2
    text = " ".join(result.stderr.replace("│", " ").split())
    assert "--ray: needs Ray Serve" in text and "pip install 'pybitnet[ray]'" in text
    assert "Traceback" not in result.output
