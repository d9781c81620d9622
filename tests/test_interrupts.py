"""sparselib.interrupts: the command's Ctrl-C is raised once, never lost in a __del__, never cuts the
clean-up short; sparselib.io.deferred_signals holds a signal until its block is done. (The command
end to end, interrupted at each point of a run: tests/test_cli.py.)"""
import gc
import signal
import sys
import time
import weakref

import pytest

from sparselib.interrupts import Interrupted, Interrupts, is_command
from sparselib.io import deferred_signals


def _spin(seconds: float = 60.0) -> None:
    """Run bytecode (where a pending signal handler gets its turn) for up to ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _handled(body):
    """Run ``body`` under Interrupts; the exception it ended with (None if it returned)."""
    interrupts = Interrupts()
    try:
        interrupts.install()
        body()
        interrupts.finish()
        return None
    except KeyboardInterrupt as err:
        err.with_traceback(None)  # as the command does: let go of the interrupted frames
        interrupts.settle()
        return err
    finally:
        interrupts.uninstall()


class _SignalsInDel:
    def __del__(self):
        signal.raise_signal(signal.SIGINT)
        sum(range(1000))  # more bytecode inside the __del__, where the handler must not raise


def test_a_signal_inside_del_is_raised_after_it():
    def body():
        obj = _SignalsInDel()
        del obj  # __del__ runs here; the interrupt must come after it, not be lost in it
        _spin()
    seen = []
    hook, sys.unraisablehook = sys.unraisablehook, seen.append
    try:
        err = _handled(body)
    finally:
        sys.unraisablehook = hook
    assert isinstance(err, Interrupted) and err.signum == signal.SIGINT and err.status == 130
    assert seen == []


def test_an_interrupt_lost_in_a_finalizer_is_delivered_again():
    """A KeyboardInterrupt swallowed where the handler cannot tell (a weakref callback) comes back."""
    class Thing:
        pass

    def body():
        thing = Thing()
        weakref.finalize(thing, lambda: (_ for _ in ()).throw(KeyboardInterrupt))
        del thing
        _spin()
    assert isinstance(_handled(body), Interrupted)


def test_further_signals_wait_while_the_first_unwinds():
    cleaned = []

    def body():
        try:
            signal.raise_signal(signal.SIGINT)
            _spin()
        finally:
            signal.raise_signal(signal.SIGINT)  # a second Ctrl-C during the clean-up: ignored
            _spin(0.05)
            cleaned.append(True)
    assert isinstance(_handled(body), Interrupted) and cleaned == [True]


def test_a_half_built_object_torn_down_by_the_interrupt_is_quiet():
    class HalfBuilt:
        def __init__(self):
            signal.raise_signal(signal.SIGINT)
            _spin()
            self.pos = 0

        def __del__(self):
            self.pos  # AttributeError: __init__ never got there (tqdm's 'pos', issue 24)

    seen = []
    hook, sys.unraisablehook = sys.unraisablehook, seen.append
    try:
        err = _handled(HalfBuilt)
        gc.collect()
    finally:
        sys.unraisablehook = hook
    assert isinstance(err, Interrupted) and seen == []


def test_handlers_and_hook_are_put_back():
    hook = sys.unraisablehook
    assert _handled(lambda: None) is None
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and sys.unraisablehook is hook


def test_sigterm_raises_interrupted_with_status_143():
    err = _handled(lambda: (signal.raise_signal(signal.SIGTERM), _spin()))
    assert isinstance(err, Interrupted) and err.status == 143 and err.word == "terminated"


def test_deferred_signals_hold_ctrl_c_until_the_block_ends():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals():
            signal.raise_signal(signal.SIGINT)
            _spin(0.05)
            done.append("all of the block")
    assert done == ["all of the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("argv0, orig, expected", [
    ("/venv/bin/sparselib", ["python", "/venv/bin/sparselib", "prune"], True),
    ("/x/sparselib/__main__.py", ["python", "-m", "sparselib", "prune"], True),
    ("-m", ["python", "-msparselib"], True),
    ("/venv/bin/pytest", ["python", "-m", "pytest", "tests"], False),
    ("-c", ["python", "-c", "import sparselib"], False),
    ("/x/ipykernel_launcher.py", ["python", "-m", "ipykernel_launcher", "-f", "k.json"], False),
])
def test_is_command(argv0, orig, expected, monkeypatch):
    monkeypatch.setattr(sys, "argv", [argv0])
    monkeypatch.setattr(sys, "orig_argv", orig)
    assert is_command() is expected


def test_is_command_reads_the_interpreter_options_only(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["-m"])
    for orig, expected in ((["python", "-X", "importtime", "-m", "sparselib"], True),
                           (["python", "script.py", "-m", "sparselib"], False)):
        monkeypatch.setattr(sys, "orig_argv", orig)
        assert is_command() is expected
