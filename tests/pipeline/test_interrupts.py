"""Ctrl-C inside a database write is held until the write ends; elsewhere it stops at once."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auditor.errors import Interrupted
from auditor.pipeline.interrupts import (
    deferred,
    exit_after_interrupt,
    interruptible,
    signals_ignored,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_inside_deferred_waits_for_the_block_to_end(sig):
    steps = []
    with pytest.raises(Interrupted) as info, interruptible(7):
        with deferred():
            os.kill(os.getpid(), sig)
            steps.append("write finished")
        steps.append("after the write")  # never reached: the held signal fires first
    assert steps == ["write finished"]
    assert info.value.run_id == 7
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_outside_deferred_stops_at_once():
    steps = []
    with pytest.raises(Interrupted), interruptible(None):
        os.kill(os.getpid(), signal.SIGINT)
        steps.append("went on")
    assert steps == []


@pytest.fixture
def the_auditor_process():
    """This process as ``auditor`` runs: it exits once interrupted (handlers put back after)."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    exit_after_interrupt()
    yield
    exit_after_interrupt(False)
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_after_the_first_interrupt_the_auditor_ignores_further_signals(the_auditor_process, sig):
    with pytest.raises(Interrupted), interruptible(3):
        os.kill(os.getpid(), sig)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    # a second Ctrl-C or SIGTERM while the run is marked interrupted and the error printed
    with signals_ignored():
        os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)  # the default action would end this process (143)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def _catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGTERM (``SigCgt`` in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & 1 << (signal.SIGTERM - 1))
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_the_command_starts_is_one_error_line(tmp_path, sig):
    """Ctrl-C during the seconds of imports (PyTorch) before the CLI runs."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditor", "runs", "--db", str(tmp_path / "a.db")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not _catches_sigterm(proc.pid):  # the entry point's handlers are installed
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.001)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (130, "", "Error: interrupted\n")
