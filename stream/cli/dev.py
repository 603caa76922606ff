"""``customer-ai dev up|down|status``: the embedded servers' table (:mod:`stream.devservers.state`)."""

from __future__ import annotations

from pathlib import Path

from stream.cli.common import output_console
from stream.devservers.process import DevServerError
from stream.devservers.state import dev_down, dev_status, dev_up, env_file, read_state
from stream.redaction import redact_text

__all__ = ["dev_main"]


def dev_main(action: str, state_dir: Path = Path(".customer-ai")) -> int:
    """Run ``customer-ai dev up|down|status`` and print a table.

    Nothing printed holds a password: addresses come without theirs and every line is
    passed through :func:`~stream.redaction.redact_text` as well.

    Parameters
    ----------
    action
        ``up``, ``down`` or ``status``.
    state_dir
        Directory for ``dev.json``, ``dev.env`` and logs.

    Returns
    -------
    int
        0 on success (for ``status``: everything answers), 1 on failure or when a
        service is not running, 2 for an unknown action.
    """
    from rich.table import Table

    console = output_console(highlight=False)
    state_dir = Path(state_dir)

    def say(text: str) -> None:
        console.print(redact_text(text))

    def show(title: str) -> bool:
        status = dev_status(state_dir)
        table = Table(title=title)
        for column in ("service", "server", "state", "pid", "address", "log"):
            table.add_column(column)
        for service, info in status.items():
            if info["running"]:
                state = "[green]running[/]"
            elif info.get("needs_password"):
                state = "[yellow]needs REDIS_PASSWORD[/]"
            else:
                state = "[red]not running[/]"
            table.add_row(
                service,
                info["server"],
                state,
                str(info["pid"] or "-"),
                redact_text(info["address"]) or "-",
                info["log"] or "-",
            )
        console.print(table)
        return all(info["running"] for info in status.values())

    try:
        if action == "up":
            env = dev_up(state_dir)
            for note in read_state(state_dir).get("notes", []):
                say(f"[yellow]note:[/] {note}")
            ok = show("customer-ai dev servers")
            for key, value in env.items():
                say(f"{key}={value}")
            console.print(f"Load them with: [bold]set -a; . {env_file(state_dir)}; set +a[/]")
            return 0 if ok else 1
        if action == "down":
            result = dev_down(state_dir)
            table = Table(title="customer-ai dev down")
            table.add_column("service")
            table.add_column("result")
            for service, outcome in result.items():
                table.add_row(service, outcome)
            console.print(table)
            return 0 if all(not r.startswith("could not") for r in result.values()) else 1
        if action == "status":
            return 0 if show("customer-ai dev servers") else 1
    except DevServerError as exc:
        say(f"[red]error:[/] {exc}")
        return 1
    console.print(f"[red]error:[/] unknown action {action!r}: use up, down or status")
    return 2
