"""Ctrl-C and SIGTERM held back while a few renames run that must happen all or none (`--resume
False` moving an older run aside): the signal then takes effect after them, never between two,
and the block can see that it came (and undo its work) before it does."""
from __future__ import annotations

import contextlib
import signal
import threading

_HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_held():
    """While the block runs, SIGINT and SIGTERM are recorded instead of handled; the block gets
    the list of those received so far. At its end the handlers are put back and each signal
    received is raised again, so its own handler runs then (KeyboardInterrupt, cli_errors'
    Terminated, or the default action). A signal ignored stays ignored. Outside the main thread
    (where Python runs no handler) nothing is held."""
    got: list = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    before = {}

    def hold(signum, frame):
        got.append(signum)
    try:
        for sig in _HELD:
            handler = signal.getsignal(sig)
            if handler in (signal.SIG_IGN, None):  # ignored, or set outside Python: left as it is
                continue
            before[sig] = handler
            signal.signal(sig, hold)
        yield got
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(got):
            signal.raise_signal(sig)
