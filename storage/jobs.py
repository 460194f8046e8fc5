"""Long work as job objects: progress and cancel, driven by whoever holds them.

A job runs synchronously with :meth:`Job.run`, or in a worker thread with
:meth:`start` / :meth:`is_running` / :meth:`finalize` / :meth:`cancel` — the
CLI draws a progress bar, a Qt timer polls it, the scheduler just runs it.
Work code calls :meth:`report` and :meth:`check_cancelled` at safe points;
a cancelled job raises :class:`~storage.errors.Cancelled` inside its own
transaction, so nothing it did is kept.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from storage.errors import Cancelled

T = TypeVar("T")


@dataclass
class Progress:
    done: int = 0
    total: int | None = None
    message: str = ""

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.done / self.total)


class Job(Generic[T]):
    """Subclasses implement :meth:`execute`; callers use run() or start()/finalize()."""

    title = "Working"

    def __init__(self) -> None:
        self.progress = Progress()
        self._cancel = threading.Event()
        self._listeners: list[Callable[[Progress], None]] = []
        self._thread: threading.Thread | None = None
        #: set when the worker has finished (result or error recorded): waiting on it is
        #: safe to interrupt, unlike ``Thread.join(timeout)``, which a Ctrl-C can leave
        #: believing a running thread had ended (Python 3.11)
        self._done = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None

    # --- for the work code ---------------------------------------------------------

    def execute(self) -> T:
        raise NotImplementedError

    def report(self, done: int | None = None, total: int | None = None, message: str | None = None
               ) -> None:
        if total is not None:
            self.progress.total = total
        if done is not None:
            self.progress.done = done
        if message is not None:
            self.progress.message = message
        for listener in self._listeners:
            listener(self.progress)
        self.check_cancelled()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise Cancelled(f"{self.title}: cancelled; nothing was changed.")

    # --- for whoever drives it -----------------------------------------------------

    def on_progress(self, listener: Callable[[Progress], None]) -> None:
        self._listeners.append(listener)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def run(self) -> T:
        return self.execute()

    def start(self) -> None:
        def target() -> None:
            try:
                self._result = self.execute()
            except BaseException as error:  # noqa: BLE001 - handed to finalize()
                self._error = error
            finally:
                self._done.set()

        self._thread = threading.Thread(target=target, name=self.title, daemon=True)
        self._thread.start()

    def is_running(self) -> bool:
        return self._thread is not None and not self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the worker; whether it has finished."""
        return self._done.wait(timeout)

    def finalize(self) -> T:
        """Wait for the worker; return its result or raise its error."""
        if self._thread is None:
            raise RuntimeError("finalize() before start()")
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[no-any-return]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for one bounded bulk step (an import, an
    export), as a ``with`` block or a decorator.

    Reading or writing 100k units makes millions of small objects while hundreds of
    thousands stay alive, and each full collection walks all of them: 15–40% of an
    import's or export's time in ``benchmarks/bench_formats.py``.  These steps make
    no reference cycles worth collecting (reference counting frees their objects);
    the collector is switched back on when the step ends, even on an error.
    Re-entrant: an inner pause leaves an outer one in force.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
