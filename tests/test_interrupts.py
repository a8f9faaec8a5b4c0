"""Ctrl-C inside a database write is held until the write ends; elsewhere it stops at once."""

import os
import signal

import pytest

from auditor.errors import Interrupted
from auditor.interrupts import deferred, interruptible


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
