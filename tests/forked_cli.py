"""Python command lines of the suite forked from a process that has imported torch and fairseq already
(multiprocessing's forkserver, one per test worker), so that each of several hundred runs does not
import them again (about 6 s of CPU each: torch, fairseq, and torch._dynamo, which torch.optim
imports at the first optimizer):

- :func:`run_module` runs ``python -m MODULE ARGS`` for a test and returns what it printed;
- :func:`python_shim` is an executable to give a recipe (``PYTHON``) or a tool (``sys.executable``)
  in place of the interpreter: the command lines it starts are forked, and so are theirs.

The child is a new process in everything a test looks at: its own working folder, environment,
sys.path (the working folder or the script's, PYTHONPATH, then the interpreter's own), thread count,
stdin, stdout, stderr and exit status, a main process to multiprocessing (no start method chosen),
and torch's and fairseq's modules out of sys.modules until it imports them, with their import's
warnings and logging then (tests/forkserver_preload.py). MODULE runs as ``__main__``, as with
``python -m`` (runpy). Tests of a real process's launch (quiet entries, signals to fairseq, installs,
memory benchmarks that set malloc's environment) start real processes instead.
"""

import atexit
import builtins
import contextlib
import json
import multiprocessing
import os
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from multiprocessing import process as mp_process
from multiprocessing import reduction
from multiprocessing.connection import wait as connection_wait
from pathlib import Path
from typing import Optional, Sequence

import python_shim as protocol  # the shim's side; python_shim() below is the executable

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


class _InheritedFd:
    """An open file descriptor of this process, which pickling for the forkserver sends to the child
    (multiprocessing.reduction.DupFd); the child gets its own number for it."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):
        return _detach, (reduction.DupFd(self.fd),)


def _detach(inherited) -> int:
    return inherited.detach()


def _run_main(argv: Sequence[str]) -> None:
    """What ``python ARGV`` runs as ``__main__``: ``-m MODULE``, ``-c CODE`` or ``SCRIPT``, with sys.argv
    and sys.path[0] as the interpreter sets them."""
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        sys.path[0] = ""
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
    else:
        sys.argv = list(argv)
        sys.path[0] = str(Path(argv[0]).resolve().parent)
        runpy.run_path(argv[0], run_name="__main__")


def _be_a_main_process() -> None:
    """multiprocessing as a fresh interpreter has it: this process its main process, no parent, no
    start method chosen (the forkserver's would start a DataLoader's workers there, not by fork)."""
    import forkserver_preload

    mp_process._current_process = forkserver_preload.MAIN_PROCESS()
    mp_process._parent_process = None
    multiprocessing.set_start_method(None, force=True)


def _child(argv: Sequence[str], env: dict, cwd: str, stdio: Sequence[int], executable: str) -> None:
    """The forked interpreter: ``stdio`` (stdin, stdout, stderr) onto fds 0, 1 and 2, then python ARGV as
    a fresh interpreter in ``cwd`` with ``env`` would run it, the leader of a process group of its own
    (what it starts can be killed with it)."""
    import forkserver_preload

    os.setpgid(0, 0)
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, closefd=False)  # multiprocessing's bootstrap put /dev/null there
    unbuffered, argv = protocol.split_unbuffered(list(argv))
    if unbuffered or env.get("PYTHONUNBUFFERED"):
        sys.stdout.reconfigure(write_through=True)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    pythonpath = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [cwd, *pythonpath, *forkserver_preload.INTERPRETER_PATH]
    sys.executable = executable
    _be_a_main_process()
    forkserver_preload.set_threads(env)
    forkserver_preload.hide_preloaded()
    try:
        _run_main(argv)
    except SystemExit:
        raise  # multiprocessing's bootstrap turns it into the exit status as the interpreter does
    except KeyboardInterrupt:  # the interpreter prints it, then dies of SIGINT
        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:  # as the interpreter does with an uncaught exception
        traceback.print_exc()
        sys.exit(1)
    finally:
        atexit._run_exitfuncs()  # as the interpreter does at exit (logging.shutdown flushes log files)
    # returning, the bootstrap waits for non-daemon threads, runs multiprocessing's finalizers and
    # flushes stdout and stderr, as a process that ends does


def _forked(argv: Sequence[str], env: dict, cwd: str, stdio: Sequence[int], executable: str):
    """The started child of _child; ``stdio`` may be closed here once this returns."""
    process = _forkserver().Process(target=_child,
                                    args=(list(argv), env, cwd, [_InheritedFd(fd) for fd in stdio], executable))
    process.start()
    return process


def run_module(module: str, *args, env: Optional[dict] = None, cwd: Optional[Path] = None,
               timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m module *args`` with ``env`` (default: this process's environment) in ``cwd``
    (default: this process's), its output captured as text, like ``subprocess.run(...,
    capture_output=True, text=True)``; raises subprocess.TimeoutExpired after ``timeout`` seconds."""
    argv = ["-m", module, *map(str, args)]
    env = dict(os.environ if env is None else env)
    cwd = str(Path(cwd or os.getcwd()).resolve())
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, open(os.devnull, "rb") as null:
        process = _forked(argv, env, cwd, [null.fileno(), out.fileno(), err.fileno()], sys.executable)
        process.join(timeout)
        command = [sys.executable, *argv]

        def text(file):
            file.seek(0)
            return file.read().decode(errors="replace")

        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(command, timeout, text(out), text(err))
        return subprocess.CompletedProcess(command, process.exitcode, text(out), text(err))


_shim: Optional[Path] = None


def python_shim() -> Path:
    """An executable that acts as this interpreter but runs ``-m MODULE``, ``-c CODE`` and ``SCRIPT``
    command lines as children of the forkserver (in its own process group, sys.executable the shim, so
    that what they start is forked too); it passes its stdin, stdout and stderr, environment and working
    folder, forwards SIGINT, SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2, and exits with the child's status or
    dies of its signal. When the shim dies (SIGKILL) its child's process group is killed with it. Other
    command lines exec the real interpreter. Served by a thread of this process, started at the first call."""
    global _shim
    if _shim is None:
        folder = Path(tempfile.mkdtemp(prefix="shim"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        address = str(folder / "socket")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(address)
        listener.listen(64)
        shim = folder / "python"  # its side: tests/python_shim.py, on the standard library alone
        shim.write_text(f"#!{sys.executable} -SE\nimport sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                        f"import python_shim\npython_shim.main({address!r}, {sys.executable!r})\n")
        shim.chmod(0o755)
        threading.Thread(target=_serve, args=(listener, str(shim)), daemon=True).start()
        _shim = shim
    return _shim


def _serve(listener: socket.socket, shim: str) -> None:
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=_relay, args=(connection, shim), daemon=True).start()


def _relay(connection: socket.socket, shim: str) -> None:
    """One shim's command line: fork it, pass on its signals, answer its exit status (negative: the
    signal it died of); kill its process group if the shim goes away first."""
    with connection:
        header, fds, _, _ = socket.recv_fds(connection, protocol.LENGTH.size, 3)
        try:
            request = json.loads(protocol.receive(connection, protocol.LENGTH.unpack(header)[0]))
            process = _forked(request["argv"], request["env"], request["cwd"], fds, shim)
        finally:
            for fd in fds:
                os.close(fd)
        while process.sentinel not in connection_wait([connection, process.sentinel]):
            try:
                (number,) = protocol.NUMBER.unpack(protocol.receive(connection, protocol.NUMBER.size))
            except EOFError:  # the shim died: so does what it ran
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.join()
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, number)
        process.join()
        with contextlib.suppress(OSError):
            connection.sendall(protocol.NUMBER.pack(process.exitcode))
