"""The recipes' console: the progress line of recipes/progress.py and the messages printed under it.

A message printed while run.sh redraws a progress line (PROGRESS_LINE=1) must first erase that line
on a terminal, so that it starts at the left margin instead of after the counters; elsewhere (a
pipe, a log file) nothing but the message is written.
"""

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "recipes"))
import progress  # noqa: E402

ERASE = b"\r\x1b[K"


def run_log(tmp_path, progress_line: str, on_terminal: bool, command: str = "log hello") -> bytes:
    """Output of `command` in a shell that sourced recipes/common.sh, on a pty or a pipe."""
    script = f'RECIPE=test; source "{REPO}/recipes/common.sh"; {command}'
    env = {**os.environ, "PROGRESS_LINE": progress_line}
    if not on_terminal:
        return subprocess.run(["bash", "-c", script], env=env, capture_output=True, check=False).stdout
    leader, follower = pty.openpty()
    try:
        subprocess.run(["bash", "-c", script], env=env, stdout=follower, stderr=follower, check=False)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the pty is closed once the child's output is read
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).replace(b"\r\n", b"\n")
    finally:
        os.close(leader)


def test_message_under_a_progress_line_erases_it_first(tmp_path):
    assert run_log(tmp_path, "1", on_terminal=True) == ERASE + b"[test] hello\n"


def test_error_under_a_progress_line_erases_it_first(tmp_path):
    assert run_log(tmp_path, "1", on_terminal=True, command="fail broken") == ERASE + b"error: broken\n"


@pytest.mark.parametrize("progress_line, on_terminal", [("0", True), ("1", False), ("0", False)])
def test_no_escape_without_a_progress_line_or_a_terminal(tmp_path, progress_line, on_terminal):
    assert run_log(tmp_path, progress_line, on_terminal) == b"[test] hello\n"


def test_status_line_reads_the_last_train_inner_line(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(
        "2026-12-01 21:00:00 | INFO | train_inner | epoch 001:     25 / 250 loss=9.5, nll_loss=9.1, "
        "num_updates=25, lr=1e-4\n"
        "2026-12-01 21:00:10 | INFO | train_inner | epoch 001:     50 / 250 loss=8.25, nll_loss=8.0, "
        "num_updates=50, lr=2e-4\n"
    )
    missing = tmp_path / "not-started.log"
    line = progress.status_line([("adam", log, "700"), ("adam_sage", missing, "700")], 85.0)
    assert line == "  adam 50/700 loss 8.25 | adam_sage 0/700 | 1:25"
