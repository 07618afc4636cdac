"""tests/forked_cli.py against real processes: the same output, streams, exit status, working folder,
environment, sys.path, arguments and thread count, and fairseq's logging where a fresh process has it;
its python_shim: the same for the command lines it forks, signals, and a kill that reaches what the
forked command started."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forked_cli import python_shim, run_module

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


# what a command sees of the interpreter's state before and after it imports fairseq: the modules, the
# start method of multiprocessing, the root logger, the warnings importing fairseq gives
STATE = """
import logging, multiprocessing, sys, warnings
print("fairseq" in sys.modules, "torch" in sys.modules, multiprocessing.get_start_method(allow_none=True),
      multiprocessing.current_process().name, multiprocessing.parent_process())
import fairseq
print("fairseq" in sys.modules, logging.getLogger().level, len(logging.getLogger().handlers))
"""


def shim_and_real(argv, **kwargs):
    """``python ARGV`` through the shim and through the interpreter itself."""
    return [subprocess.run([str(interpreter), *map(str, argv)], capture_output=True, text=True, **kwargs)
            for interpreter in (python_shim(), sys.executable)]


def test_the_shim_runs_a_module_a_script_and_code_as_the_interpreter_does(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), "PROBE_VALUE": "x y", "OMP_NUM_THREADS": "1"}
    for argv in (["-m", "probe", 3, "a b"], [tmp_path / "probe.py", 4], ["-c", PROBE, 5], ["-u", "-m", "probe", 6], ["-V"]):
        shim, expected = shim_and_real(argv, env=env, cwd=tmp_path)
        assert (shim.returncode, shim.stdout, shim.stderr) == (expected.returncode, expected.stdout, expected.stderr)
    assert expected.stdout.startswith("Python 3.")
    # fairseq not imported until imported; its import's warnings (not its import-time log lines) given again
    shim, expected = shim_and_real(["-c", STATE], env=env, cwd=tmp_path)
    assert (shim.returncode, shim.stdout) == (expected.returncode, expected.stdout)
    assert expected.stdout.splitlines() == ["False False None MainProcess None", "True 10 1"]
    warned = [[line for line in run.stderr.splitlines() if "Warning: " in line] for run in (shim, expected)]
    assert warned[0] == warned[1] and warned[1]
    shim, expected = shim_and_real(["-c", "import sys; print(sys.stdin.read().upper())"], input="piped", env=env)
    assert shim.stdout == expected.stdout == "PIPED\n"


def test_what_the_shim_runs_sees_sys_executable_as_the_shim():
    shim = subprocess.run([str(python_shim()), "-c", "import sys; print(sys.executable)"], capture_output=True, text=True)
    assert shim.stdout.strip() == str(python_shim())


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_shim_ends_the_command_as_it_ends_the_interpreter(tmp_path, number):
    results = []
    for interpreter in (python_shim(), sys.executable):
        started = tmp_path / f"started-{len(results)}"
        process = subprocess.Popen([str(interpreter), "-c", f"import time; open({str(started)!r}, 'w').close(); time.sleep(60)"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while not started.exists():
            time.sleep(0.05)
        process.send_signal(number)
        results.append((process.wait(timeout=30), process.stderr.read().splitlines()[-1:]))
    assert results[0] == results[1] and results[0][0] == -number


def test_killing_the_shim_kills_what_its_command_started(tmp_path):
    child = tmp_path / "child"
    (tmp_path / "sleeper.py").write_text(f"import os, time\nopen({str(child)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n")
    code = f"import subprocess, sys; subprocess.run([sys.executable, {str(tmp_path / 'sleeper.py')!r}])"
    process = subprocess.Popen([str(python_shim()), "-c", code])
    while not child.exists() or not child.read_text():
        assert process.poll() is None, "the command ended before it started its child"
        time.sleep(0.05)
    pid = int(child.read_text())
    process.kill()
    process.wait()

    def alive() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.time() + 10
    while alive() and time.time() < deadline:
        time.sleep(0.05)
    assert not alive()
