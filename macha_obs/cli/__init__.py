"""Command line: the entry points, and the only place that wires the rooms together.

Every `macha-obs` subcommand is registered here, by name, in one list: no module adds
itself to the group as a side effect of being imported.
"""

from macha_obs.cli import ask, install, learn, mcp, pause, posture, rules, serve, webhook
from macha_obs.cli import eval as eval_cmd
from macha_obs.cli.approve import approve_main
from macha_obs.cli.logs import logs_main
from macha_obs.cli.main import main
from macha_obs.cli.serve import check_main
from macha_obs.cli.wiring import build_executor

for _command in (
    serve.serve,
    serve.check,
    mcp.mcp_stdio,
    ask.ask,
    eval_cmd.eval_command,
    install.install_command,
    install.uninstall_command,
    learn.learn_group,
    pause.pause,
    pause.resume,
    posture.posture_group,
    rules.rules_group,
    webhook.webhook_token,
):
    main.add_command(_command)

__all__ = ["approve_main", "build_executor", "check_main", "logs_main", "main"]
