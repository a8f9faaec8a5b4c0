"""``auditor`` under torchrun with rank 1 killed by SIGKILL at its first pair-score write.

Rank 1 first waits until rank 0 has committed block 0 (test points 0..CHUNK-1), so the run
is left with exactly rank 0's blocks stored, whatever the timing. tests/test_distributed.py
launches it as ``torchrun ... tests/dying_rank.py scan ...``.
"""

import os
import signal
import time

from auditor.cli import main
from auditor.store import pairs

CHUNK = 256


def _die_after_rank_0(conn, run_id, first_test, scores):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if set(range(CHUNK)) <= pairs.stored_test_indexes(conn.engine, run_id):
            break
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)


if os.environ.get("RANK") == "1":
    pairs.write_pair_scores = _die_after_rank_0
main()
