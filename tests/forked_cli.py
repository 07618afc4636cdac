"""``python -m MODULE ARGS`` for the suite's fairseq command lines, forked from a process that has
imported torch and fairseq already (multiprocessing's forkserver, one per test worker), so that each
of several hundred runs does not import them again (about 6 s of CPU each: torch, fairseq, and
torch._dynamo, which torch.optim imports at the first optimizer).

The child is a new process in everything a test looks at: its own working folder, environment,
sys.path (the working folder, PYTHONPATH, then the interpreter's own), thread count, stdout and
stderr (files, read back as text) and exit status; MODULE runs as ``__main__``, as with ``python -m``
(runpy), with our plugin imported by fairseq's ``--user-dir`` as in a real run. What it shares with
the forkserver is only what a fresh interpreter would import in the same way: torch and fairseq's
modules (not fairseq_cli's, whose import configures logging, nor fairseq_sage). Tests of a real
process's launch (quiet entries, signals, installs) start real processes instead.
"""

import builtins
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Optional, Sequence

PRELOAD = "forkserver_preload"
"""The module the forkserver imports first (tests/forkserver_preload.py): torch and fairseq."""

_context = None


def _forkserver():
    """The forkserver context, its server started with PRELOAD imported (the server imports it from
    its own sys.path, which PYTHONPATH sets: this folder is added while it starts)."""
    global _context
    if _context is None:
        from multiprocessing import forkserver

        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([PRELOAD])
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), *([saved] if saved else [])])
        try:
            forkserver.ensure_running()
        finally:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved
        _context = context
    return _context


def _replay_logging_at_the_first_fairseq_import() -> None:
    import forkserver_preload

    original = builtins.__import__

    def first_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and (name == "fairseq" or name.startswith("fairseq.")):
            builtins.__import__ = original
            forkserver_preload.replay_import_logging()
        return original(name, globals, locals, fromlist, level)

    builtins.__import__ = first_import


def _child(module: str, argv: Sequence[str], env: dict, cwd: str, out: str, err: str) -> None:
    import forkserver_preload

    for fd, path in ((1, out), (2, err)):
        handle = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.dup2(handle, fd)
        os.close(handle)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    pythonpath = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [cwd, *pythonpath, *forkserver_preload.INTERPRETER_PATH]
    forkserver_preload.set_threads(env)
    sys.argv = [module, *argv]
    _replay_logging_at_the_first_fairseq_import()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit:
        raise  # multiprocessing's bootstrap turns it into the exit status as the interpreter does
    except BaseException:  # as the interpreter does with an uncaught exception
        traceback.print_exc()
        sys.exit(1)
    # returning, the bootstrap waits for non-daemon threads, runs the finalizers (semaphores, temporary
    # folders) and flushes stdout and stderr, as a process that ends does


def run_module(module: str, *args, env: Optional[dict] = None, cwd: Optional[Path] = None,
               timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m module *args`` with ``env`` (default: this process's environment) in ``cwd``
    (default: this process's), its output captured as text, like ``subprocess.run(...,
    capture_output=True, text=True)``; raises subprocess.TimeoutExpired after ``timeout`` seconds."""
    argv = [str(a) for a in args]
    env = dict(os.environ if env is None else env)
    cwd = str(Path(cwd or os.getcwd()).resolve())
    with tempfile.TemporaryDirectory() as folder:
        out, err = Path(folder) / "stdout", Path(folder) / "stderr"
        out.touch()
        err.touch()
        process = _forkserver().Process(target=_child, args=(module, argv, env, cwd, str(out), str(err)))
        process.start()
        process.join(timeout)
        command = [sys.executable, "-m", module, *argv]
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(command, timeout, out.read_text(errors="replace"),
                                            err.read_text(errors="replace"))
        return subprocess.CompletedProcess(command, process.exitcode, out.read_text(errors="replace"),
                                           err.read_text(errors="replace"))
