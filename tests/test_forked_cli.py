"""tests/forked_cli.py against real processes: the same output, streams, exit status, working folder,
environment, sys.path, arguments and thread count, and fairseq's logging where a fresh process has it."""

import subprocess
import sys

from forked_cli import run_module

PROBE = """
import os, sys, torch
print(os.getcwd(), os.environ.get("PROBE_VALUE"), sys.argv[1:], torch.get_num_threads(), sys.path[0])
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


def real(module, *args, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd)


def test_a_module_sees_its_folder_environment_arguments_and_threads_and_exits_with_its_status(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    work = tmp_path / "work"
    work.mkdir()
    for threads in ("1", "3"):
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), "PROBE_VALUE": "x y", "OMP_NUM_THREADS": threads}
        expected = real("probe", 3, "a b", env=env, cwd=work)
        forked = run_module("probe", 3, "a b", env=env, cwd=work)
        assert (forked.returncode, forked.stdout, forked.stderr) == (expected.returncode, expected.stdout, expected.stderr)
        assert expected.returncode == 3 and expected.stdout.startswith(f"{work} x y ['3', 'a b'] ")  # then the threads


def test_an_uncaught_exception_and_a_fairseq_refusal_read_as_in_a_real_process(tmp_path):
    (tmp_path / "fails.py").write_text("raise ValueError('no such thing')\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)}
    expected, forked = real("fails", env=env, cwd=tmp_path), run_module("fails", env=env, cwd=tmp_path)
    assert forked.returncode == expected.returncode == 1
    assert forked.stderr.splitlines()[-1] == expected.stderr.splitlines()[-1] == "ValueError: no such thing"
    # fairseq-generate of a missing data folder: it logs through the root logger that importing fairseq
    # configures (stderr), then fails; both the log lines and the error land where a fresh process puts them
    args = (tmp_path / "missing", "--path", tmp_path / "missing.pt", "--cpu")
    expected, forked = real("fairseq_cli.generate", *args), run_module("fairseq_cli.generate", *args)
    assert forked.returncode == expected.returncode != 0
    assert forked.stderr.splitlines()[-1] == expected.stderr.splitlines()[-1]
    logged = [line for line in expected.stderr.splitlines() if line.startswith("INFO:fairseq_cli.generate:")]
    assert logged and logged == [line for line in forked.stderr.splitlines() if line.startswith("INFO:fairseq_cli.generate:")]
    assert forked.stdout == expected.stdout
