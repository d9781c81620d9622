"""Ctrl-C and SIGTERM in the ``sparselib`` command: one clean exit wherever the signal lands.

Python turns SIGINT into a ``KeyboardInterrupt`` raised at whatever bytecode the main thread runs
next. Most places unwind cleanly; a few do not: inside a ``__del__`` the exception cannot propagate
(Python prints "Exception ignored in ..." and the interrupt is lost), and an object whose
``__init__`` was interrupted (a tqdm bar) later fails in its own ``__del__``. :class:`Interrupts`
handles both for the command:

* the first SIGINT/SIGTERM raises :class:`Interrupted` (a ``KeyboardInterrupt``), but never inside a
  ``__del__``: there the handler asks to be called again 10 ms later, until it is outside;
* once raised, further signals are ignored, so the unwinding (removing temporary files) runs to
  its end;
* errors that objects torn down by the interrupt report from their ``__del__`` are dropped.

Before the command has imported its heavy modules (torch takes seconds), :func:`guard_command_start`
(called first thing by ``import sparselib`` in the ``sparselib`` process only) makes Ctrl-C exit at
once with the same line: nothing has been written yet. Critical sections that must not be cut in
half (renames, removing temporary files) defer signals with :func:`sparselib.io.deferred_signals`.

This module imports nothing heavy: it runs before torch is imported.
"""
from __future__ import annotations

import _thread
import gc
import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM in the command (``signum`` says which)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = signum

    @property
    def word(self) -> str:
        return "terminated" if self.signum == signal.SIGTERM else "interrupted"

    @property
    def status(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def is_command() -> bool:
    """Whether this process is the ``sparselib`` command (the console script or ``python -m sparselib``)."""
    if sys.argv and os.path.basename(sys.argv[0]) in ("sparselib", "sparselib.exe", "sparselib-script.py"):
        return True
    argv = iter(list(getattr(sys, "orig_argv", ()))[1:])  # the interpreter's options, then what it runs
    for arg in argv:
        if arg in ("-X", "-W", "--check-hash-based-pycs"):  # options with a separate value
            next(argv, None)
        elif arg.startswith("-m"):
            module = arg[2:] or next(argv, "")
            return module == "sparselib" or module.startswith("sparselib.")
        elif arg.startswith("-c") or not arg.startswith("-"):  # a command or a script
            return False
    return False


class _StartGuard:
    """The command's handler until :class:`Interrupts` takes over: nothing is written yet, so exit now."""

    def __call__(self, signum, frame):
        word = "terminated" if signum == signal.SIGTERM else "interrupted"
        os.write(2, f"sparselib: {word}; nothing was written\n".encode())
        os._exit(128 + signum)


START_GUARD = _StartGuard()


def guard_command_start() -> None:
    """In the ``sparselib`` process only: Ctrl-C/SIGTERM exit at once (status 130/143, one line)
    until the command installs :class:`Interrupts`. A signal the shell ignores stays ignored."""
    if not is_command() or not _in_main_thread():
        return
    for signum in SIGNALS:
        if signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL):
            signal.signal(signum, START_GUARD)


def _inside_del(frame) -> bool:
    """Whether ``frame`` runs inside a ``__del__`` (or this module's unraisable hook), where an
    exception cannot propagate."""
    while frame is not None:
        if frame.f_code.co_name in ("__del__", "_unraisable"):
            return True
        frame = frame.f_back
    return False


class Interrupts:
    """The command's handling of SIGINT/SIGTERM (see the module docstring)::

        interrupts = Interrupts()
        try:
            interrupts.install()
            ...                     # the work; Interrupted is raised at most once
            interrupts.finish()     # signals from here on are ignored
        except Interrupted as err:
            ...                     # one line, exit status err.status
        finally:
            interrupts.uninstall()
    """

    def __init__(self):
        self.state = "off"          # "armed" -> "raised" (an Interrupted is unwinding) or "finished"
        self._handlers: dict = {}
        self._hook = None

    def install(self) -> None:
        if not _in_main_thread():   # signals reach the main thread only; nothing to do here
            return
        self.state = "armed"
        self._hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        for signum in SIGNALS:
            old = signal.getsignal(signum)
            self._handlers[signum] = old
            if old is not signal.SIG_IGN:  # started with SIGINT ignored (nohup, `&`): keep ignoring it
                signal.signal(signum, self._handler)

    def finish(self) -> None:
        """The work is done: a signal from now on is ignored (the process is about to exit)."""
        if self.state == "armed":
            self.state = "finished"

    def uninstall(self) -> None:
        """Collect what the interrupt left (its ``__del__`` errors are dropped), then put back the
        handlers; in the command process, signals stay ignored until it exits."""
        if self.state == "armed":
            self.state = "finished"
        if self._hook is None:
            return
        gc.collect()
        sys.unraisablehook, self._hook = self._hook, None
        for signum, old in self._handlers.items():
            if old is START_GUARD:  # the command process: it exits right after; ignore a late signal
                old = signal.SIG_IGN
            signal.signal(signum, old)
        self._handlers = {}

    def settle(self) -> None:
        """After an interrupt, before its message: let go of what it tore down (errors from their
        ``__del__`` are dropped) and close the progress bars still open, so that the message starts
        a line of its own."""
        self.state = "raised"
        gc.collect()
        std = sys.modules.get("tqdm.std")
        for bar in list(std.tqdm._instances) if std is not None else ():
            try:
                bar.close()
            except Exception:  # a bar whose __init__ was cut short
                pass

    def _handler(self, signum, frame):
        if self.state != "armed":
            return
        if _inside_del(frame):  # an exception here would be printed and lost: be called again later
            self._later(signum)
            return
        self.state = "raised"
        raise Interrupted(signum)

    @staticmethod
    def _later(signum) -> None:
        """The handler again in 10 ms (not from the handler itself: a signal re-raised there is handled
        before the handler returns)."""
        timer = threading.Timer(0.01, _thread.interrupt_main, (signum,))
        timer.daemon = True
        timer.start()

    def _unraisable(self, info):
        if isinstance(info.exc_value, KeyboardInterrupt) and self.state != "finished":
            # an interrupt that landed in a finalizer this module did not recognise, and was lost there
            self.state = "armed"
            self._later(getattr(info.exc_value, "signum", signal.SIGINT))
            return
        if self.state == "raised":  # an object the interrupt tore down (a half-built tqdm bar): expected
            return
        if self._hook is not None:
            self._hook(info)
