"""Two quickstarts in one WORKDIR: the second stops at once with one line naming the first's pid.

Without the lock both wrote the same files and one died on the other's renamed ``.partial`` file
(a raw ``mv: cannot stat``). The first run here is the real ``run.sh``, held still inside its
first step by a ``PYTHON`` that waits: nothing is trained.
"""

import os
import signal
import subprocess
import time

from conftest import REPO

RUN = REPO / "recipes" / "multi30k" / "run.sh"


def snapshot(folder):
    """Every file under ``folder`` with its bytes."""
    return {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def quickstart(workdir, data, python, **popen):
    env = dict(os.environ, PYTHON=str(python))
    return subprocess.Popen(["bash", str(RUN), "--data", str(data), str(workdir)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def test_a_second_quickstart_in_the_same_workdir_stops_at_once(tmp_path):
    workdir, data = tmp_path / "work", tmp_path / "raw"
    workdir.mkdir()
    data.mkdir()
    (workdir / "results.md").write_text("an earlier run's table\n")
    started = tmp_path / "python-started"
    waiting = tmp_path / "waiting-python"
    waiting.write_text(f"#!/bin/sh\ntouch {started}\nexec sleep 120\n")
    waiting.chmod(0o755)

    first = quickstart(workdir, data, waiting, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.poll() else ""
            time.sleep(0.2)
        assert (workdir / ".quickstart.lock").read_text() == f"{first.pid}\n"
        before = snapshot(workdir)

        began = time.monotonic()
        second = quickstart(workdir, data, waiting)
        stdout, stderr = second.communicate(timeout=60)
        assert second.returncode == 1
        assert stderr.splitlines() == [
            f"error: WORKDIR {workdir} is in use by another quickstart (pid {first.pid}); "
            "wait for it or pick another folder"]
        assert stdout == ""
        assert time.monotonic() - began < 15
        assert snapshot(workdir) == before
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.communicate(timeout=60)

    # the lock goes with the run that held it: the next run passes it (and fails in its first step here)
    third = quickstart(workdir, data, "false")
    _, stderr = third.communicate(timeout=60)
    assert third.returncode != 0 and "in use" not in stderr
    assert (workdir / ".quickstart.lock").read_text() == f"{third.pid}\n"
