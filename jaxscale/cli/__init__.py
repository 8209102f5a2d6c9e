"""The `jaxscale` command line and the HTML report (the top layer)."""

from jaxscale.cli.app import main

__all__ = ["main"]
