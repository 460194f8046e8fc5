"""Ctrl-C on a long command: the job is cancelled and the command says so (exit 130).

A merge interrupted on a terminal used to print a Python traceback: the progress-bar loop
waited with ``Thread.join(0.1)``, and an interrupted join (Python 3.11) could leave the
thread marked finished while it still ran — ``finalize`` then returned None and the report
crashed.  Without a terminal, Ctrl-C ended in click's "Aborted!" and exit 1."""

from __future__ import annotations

import _thread
import io
import threading
import time

import pytest
from click.testing import CliRunner

from georeg import cli
from storage.errors import Cancelled
from storage.jobs import Job


class Slow(Job[str]):
    """Work that checks for cancellation between steps, as every job does."""

    title = "Slow work"

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0
        self.stopped = threading.Event()

    def execute(self) -> str:
        try:
            for _ in range(600):  # a minute at most
                time.sleep(0.1)
                self.steps += 1
                self.report(done=self.steps, total=600)
            return "finished"
        finally:
            self.stopped.set()


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def interrupt_after(seconds: float) -> None:
    threading.Timer(seconds, _thread.interrupt_main).start()  # what Ctrl-C does


def test_ctrl_c_with_a_progress_bar_cancels_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.sys, "stderr", Tty())
    monkeypatch.setattr(cli, "err_console", cli.Console(file=Tty(), force_terminal=True))
    job = Slow()
    interrupt_after(0.5)
    with pytest.raises(Cancelled):
        cli.run_job(job, as_json=False)
    assert job.stopped.is_set() and job.steps < 600  # the work really stopped


def test_ctrl_c_without_a_terminal_is_a_cancel_too() -> None:
    job = Slow()
    interrupt_after(0.5)
    with pytest.raises(Cancelled, match="cancelled"):
        cli.run_job(job, as_json=True)
    assert job.stopped.is_set() and job.steps < 600


def test_a_cancelled_command_exits_130() -> None:
    import click

    group = click.Group()

    @cli.command(group, "slow")
    def slow(as_json: bool) -> None:
        interrupt_after(0.3)
        cli.run_job(Slow(), as_json=True)

    result = CliRunner().invoke(group, ["slow"])
    assert result.exit_code == 130, result.output
