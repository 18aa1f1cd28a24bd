"""Command line: the entry points, and the only place that wires the rooms together."""

from macha_obs.cli import ask as _ask  # noqa: F401  (registers ask on main)
from macha_obs.cli import install as _install  # noqa: F401  (registers install and uninstall on main)
from macha_obs.cli import mcp as _mcp  # noqa: F401  (registers mcp on main)
from macha_obs.cli import pause as _pause  # noqa: F401  (registers pause and resume on main)
from macha_obs.cli import rules as _rules  # noqa: F401  (registers rules render and show on main)
from macha_obs.cli import serve as _serve  # noqa: F401  (registers serve and check on main)
from macha_obs.cli import webhook as _webhook  # noqa: F401  (registers webhook-token on main)
from macha_obs.cli.approve import approve_main
from macha_obs.cli.logs import logs_main
from macha_obs.cli.main import main
from macha_obs.cli.serve import check_main
from macha_obs.cli.wiring import build_executor

__all__ = ["approve_main", "build_executor", "check_main", "logs_main", "main"]
