"""`python -m pybitnet.cli`: the same as the `pybitnet` command."""

from pybitnet.cli import main

main()
