"""Ctrl-C while ``mlflow-amnesia`` starts: one line and exit status 130, never a traceback.

Loading torch and MLflow takes seconds, before any command's own handling exists (which marks
a run FAILED and says what was left). While the package is imported by the ``mlflow-amnesia``
program, a SIGINT handler prints one line and ends the process at once: nothing has been read
or written yet, so there is nothing to finish. The command line puts Python's own handler back
as it starts (:func:`end_startup`). Only that program: a script or notebook that imports the
package keeps its Ctrl-C (a KeyboardInterrupt). Stdlib only, so it is in place before the
heavy imports.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

STARTUP_MESSAGE = "interrupted while starting: nothing was changed"
_PROGRAM = "mlflow-amnesia"


def _is_the_program() -> bool:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name == _PROGRAM or name.startswith(_PROGRAM + ".") or name.startswith(_PROGRAM + "-script")


def _on_sigint(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    try:
        sys.stderr.write(STARTUP_MESSAGE + "\n")
        sys.stderr.flush()
    finally:
        os._exit(130)  # mid-import: no handler of ours would run, nothing to clean up


def guard_startup() -> None:
    """For the ``mlflow-amnesia`` program: Ctrl-C ends it with one line, until :func:`end_startup`."""
    if (
        _is_the_program()
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        signal.signal(signal.SIGINT, _on_sigint)


def end_startup() -> None:
    """Give Ctrl-C back to Python (a KeyboardInterrupt the commands handle)."""
    if signal.getsignal(signal.SIGINT) is _on_sigint and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
