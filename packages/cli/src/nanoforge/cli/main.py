"""Entry point of the ``nanoforge`` command: mounts each installed package's click group lazily.

A package registers its group in its pyproject::

    [project.entry-points."nanoforge.cli"]
    tokenizer = "nanoforge.tokenizer.cli:group"

The group is only imported when its name is invoked (or for ``--help`` of that group), so listing the
commands stays fast even when a package pulls in torch.
"""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint, entry_points

import click

from nanoforge.cli.errors import EXIT_USER_ERROR, debug_enabled, one_line

ENTRY_POINT_GROUP = "nanoforge.cli"

#: Library exceptions that mean "the input was bad"; shown as one line instead of a traceback.
USER_FACING_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, KeyError, LookupError)


def _discover() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


class LazyGroup(click.Group):
    """A click group whose sub-groups come from entry points and are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_discover()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            return cmd
        ep = _discover().get(cmd_name)
        if ep is None:
            return None
        loaded = ep.load()
        if not isinstance(loaded, click.Command):
            raise click.ClickException(f"entry point {ep.value!r} is not a click command")
        return loaded

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text without importing every group: show the distribution that provides each one.
        rows = []
        for name, ep in sorted(_discover().items()):
            dist = ep.dist.name if ep.dist is not None else ep.value
            rows.append((name, f"commands from {dist}"))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nanoforge-cli", prog_name="nanoforge")
def cli() -> None:
    """nanoforge: a from-scratch LLM stack you can read and run.

    Each installed nanoforge package adds one command group below. Set NANOFORGE_DEBUG=1 to see full
    tracebacks instead of one-line errors.
    """


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit status instead of raising ``SystemExit``."""
    try:
        cli.main(args=argv, prog_name="nanoforge", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except USER_FACING_ERRORS as exc:
        if debug_enabled():
            raise
        click.echo(f"error: {one_line(exc)}", err=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
