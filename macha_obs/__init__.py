"""macha-obs: a self-healing sidecar for Linux hosts."""

__version__ = "0.1.0"
