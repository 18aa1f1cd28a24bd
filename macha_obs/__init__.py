"""macha-obs: a self-healing sidecar for Linux hosts."""

# The one version source: pyproject.toml ([tool.setuptools.dynamic]) and
# nixos/package.nix read it from here.
__version__ = "0.1.0"
