"""Running the CLI in-process for the tests: one torch thread, the exit code checked."""

from click.testing import CliRunner, Result

from bayesprune.cli import main


def invoke(*args: str, ok: bool = True) -> Result:
    """`bayesprune ARGS --threads 1`; with `ok`, assert it exited 0 (output in the message)."""
    result = CliRunner().invoke(main, [*args, "--threads", "1"])
    if ok:
        assert result.exit_code == 0, result.output
    return result
