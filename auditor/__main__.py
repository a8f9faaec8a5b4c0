"""The ``auditor`` command (``python -m auditor`` and the console script).

Importing the CLI takes seconds (PyTorch); Ctrl-C or SIGTERM in that time ends the process
with one line, ``Error: interrupted``, and exit status 130, as everywhere else, instead of
a ``KeyboardInterrupt`` traceback from deep inside an import.
"""

import os
import signal


def _interrupted_while_starting(_signum, _frame) -> None:
    os.write(2, b"Error: interrupted\n")
    os._exit(130)  # nothing written yet; an exception here could be swallowed by an import


def main() -> None:
    """Import the CLI under the handler above, then run it with the handlers it had."""
    saved = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(s) is not signal.SIG_IGN:  # a signal ignored stays ignored
            saved[s] = signal.signal(s, _interrupted_while_starting)
    from auditor.cli import main as cli_main

    for s, handler in saved.items():
        signal.signal(s, signal.SIG_DFL if handler is None else handler)
    cli_main()


if __name__ == "__main__":
    main()
