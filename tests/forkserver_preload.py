"""What the forkserver of tests/forked_cli.py imports before it forks a child: torch, torch._dynamo
(which torch.optim imports at the first optimizer) and the fairseq modules that fairseq's command
lines import (not fairseq_cli's nor our plugin), with their import-time warnings sent to /dev/null (a
fresh process prints them once, before the command's own output); the interpreter's own sys.path;
torch's thread count without OMP_NUM_THREADS, for the children whose environment does not set it;
and what importing fairseq does to the root logger (one of its models calls
``logging.basicConfig(level=DEBUG)``), undone here and replayed by each child where its own first
fairseq import would do it."""

import json
import logging
import os
import subprocess
import sys

MODULES = ("numpy", "torch._dynamo", "omegaconf", "sacrebleu", "fairseq.checkpoint_utils", "fairseq.options", "fairseq.tasks",
           "fairseq.utils", "fairseq.quantization_utils", "fairseq.data.iterators", "fairseq.data.plasma_utils",
           "fairseq.dataclass.configs", "fairseq.dataclass.initialize", "fairseq.dataclass.utils",
           "fairseq.distributed", "fairseq.file_io", "fairseq.logging.progress_bar", "fairseq.trainer",
           "fairseq.model_parallel.megatron_trainer", "fairseq.scoring", "fairseq.sequence_generator")


def _interpreter_path() -> list:
    """sys.path of ``python -c`` without PYTHONPATH, less its first entry (the working folder's)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run([sys.executable, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"], env=env,
                           cwd="/", capture_output=True, text=True, check=True)
    return json.loads(probe.stdout)


def _import_quietly() -> tuple:
    """Import torch and MODULES, stdout and stderr at /dev/null; torch's default thread count, and the
    root logger's level where the imports gave it a handler (None where they did not), both undone."""
    import importlib

    saved = os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    threads = os.environ.pop("OMP_NUM_THREADS", None)
    try:
        import torch

        default = torch.get_num_threads()
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        for name in MODULES:
            importlib.import_module(name)
        configured = root.level if root.handlers != handlers else None
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)
        if threads is not None:
            os.environ["OMP_NUM_THREADS"] = threads
    return default, configured


INTERPRETER_PATH = _interpreter_path()
DEFAULT_THREADS, IMPORT_LOGGING_LEVEL = _import_quietly()


def replay_import_logging() -> None:
    """What the first ``import fairseq`` of a fresh process does to the root logger: basicConfig at the
    level it set, a no-op where the command configured logging before (as fairseq-train does)."""
    if IMPORT_LOGGING_LEVEL is not None:
        logging.basicConfig(level=IMPORT_LOGGING_LEVEL)


def set_threads(env: dict) -> None:
    """torch's intra-op threads as a new process with ``env`` would start with them: OMP_NUM_THREADS,
    at most the default (a fresh torch caps it there; tests/test_forked_cli.py compares)."""
    import torch

    requested = int(env["OMP_NUM_THREADS"]) if env.get("OMP_NUM_THREADS") else DEFAULT_THREADS
    torch.set_num_threads(min(requested, DEFAULT_THREADS))
