"""What the forkserver of tests/forked_cli.py imports before it forks a child: torch, torch._dynamo
(which torch.optim imports at the first optimizer) and the fairseq modules that fairseq's command
lines import (not fairseq_cli's nor our plugin), quietly; the interpreter's own sys.path; torch's
thread count without OMP_NUM_THREADS, for the children whose environment does not set it.

A child must not see these imports before it makes them: :func:`hide_preloaded` takes them out of
its sys.modules (code such as ``fairseq_sage/__init__.py`` asks whether fairseq is imported) and
gives each top-level package back whole at the child's first import of one of its modules, with
what that import does in a fresh process: its warnings (recorded here, emitted again through the
child's own warning filters) and, for fairseq, the root logger's configuration (one of its models
calls ``logging.basicConfig(level=DEBUG)``; undone here)."""

import importlib
import importlib.abc
import importlib.util
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import warnings
from collections import defaultdict

MODULES = ("torch", "numpy", "torch._dynamo", "omegaconf", "sacrebleu", "fairseq.checkpoint_utils", "fairseq.options",
           "fairseq.tasks", "fairseq.utils", "fairseq.quantization_utils", "fairseq.data.iterators",
           "fairseq.data.plasma_utils", "fairseq.dataclass.configs", "fairseq.dataclass.initialize",
           "fairseq.dataclass.utils", "fairseq.distributed", "fairseq.file_io", "fairseq.logging.progress_bar",
           "fairseq.trainer", "fairseq.model_parallel.megatron_trainer", "fairseq.scoring", "fairseq.sequence_generator")


def _interpreter_path() -> list:
    """sys.path of ``python -c`` without PYTHONPATH, less its first entry (the working folder's)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run([sys.executable, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"], env=env,
                           cwd="/", capture_output=True, text=True, check=True)
    return json.loads(probe.stdout)


def _top(name: str) -> str:
    return name.partition(".")[0]


def _third_party(name: str) -> bool:
    """Whether module ``name`` is outside the standard library (what the children hide)."""
    return _top(name) not in sys.stdlib_module_names


def _import_quietly():
    """Import MODULES, stdout and stderr at /dev/null; return torch's default thread count, the
    root logger's level where the imports gave it a handler (None where they did not; undone), the
    warnings that importing each top-level package gave, the packages each one's import brought, and
    the modules imported (beyond the standard library)."""
    saved = os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    threads = os.environ.pop("OMP_NUM_THREADS", None)
    before = set(sys.modules)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    given, brought = defaultdict(list), defaultdict(set)
    try:
        for name in MODULES:
            tops = {_top(n) for n in sys.modules}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                importlib.import_module(name)
            given[_top(name)] += caught
            brought[_top(name)] |= {t for t in {_top(n) for n in sys.modules} - tops - {_top(name)} if _third_party(t)}
            if name == "torch":
                default = sys.modules["torch"].get_num_threads()
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
    imported = [name for name in set(sys.modules) - before if sys.modules[name] is not None and _third_party(name)]
    return default, configured, dict(given), dict(brought), imported


INTERPRETER_PATH = _interpreter_path()
MAIN_PROCESS = type(multiprocessing.current_process())
"""multiprocessing's class of a main process (the forkserver is one; the module deletes the name)."""
DEFAULT_THREADS, IMPORT_LOGGING_LEVEL, IMPORT_WARNINGS, IMPORTS_BROUGHT, PRELOADED = _import_quietly()


def _replay_import(top: str) -> None:
    """What the first import of package ``top`` does in a fresh process, beyond importing: its
    warnings, each location once as the default filters have it; for fairseq, basicConfig at the
    level it set (a no-op where the command configured logging before, as fairseq-train does)."""
    registries = defaultdict(dict)
    for w in IMPORT_WARNINGS.get(top, []):
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, registry=registries[w.filename])
    if top == "fairseq" and IMPORT_LOGGING_LEVEL is not None:
        logging.basicConfig(level=IMPORT_LOGGING_LEVEL)


class _Preloaded(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A finder first in sys.meta_path that gives the hidden modules back, a top-level package (and
    the packages its import brought) at a time; ``python -m`` of one of them runs its code afresh."""

    def __init__(self, hidden: dict):
        self.hidden = hidden
        self.restored = set()

    def _restore(self, top: str, keep: str) -> None:
        """Package ``top`` and those its import brought back in sys.modules (``keep`` excepted, for
        the import system to take from :meth:`create_module`), each with its import's effects once."""
        for name in [n for n in self.hidden if _top(n) == top and n != keep]:
            sys.modules[name] = self.hidden.pop(name)
        if top not in self.restored:
            self.restored.add(top)
            for other in sorted(IMPORTS_BROUGHT.get(top, ())):
                self._restore(other, keep)
            _replay_import(top)

    def find_spec(self, name, path=None, target=None):
        if name not in self.hidden:
            return None
        self._restore(_top(name), keep=name)
        original = self.hidden[name].__spec__
        spec = importlib.util.spec_from_loader(name, self, origin=original.origin,
                                               is_package=original.submodule_search_locations is not None)
        spec.submodule_search_locations = original.submodule_search_locations
        return spec

    def create_module(self, spec):
        return self.hidden.pop(spec.name)

    def exec_module(self, module):
        """Imported already, in the forkserver."""

    def get_code(self, name):
        """The module's code, for runpy (``python -m``) to run as __main__."""
        return self.hidden[name].__spec__.loader.get_code(name)


def hide_preloaded() -> None:
    """Take the preloaded modules out of sys.modules until this process imports them."""
    sys.meta_path.insert(0, _Preloaded({name: sys.modules.pop(name) for name in PRELOADED if name in sys.modules}))


def set_threads(env: dict) -> None:
    """torch's intra-op threads as a new process with ``env`` would start with them: OMP_NUM_THREADS,
    at most the default (a fresh torch caps it there; tests/test_forked_cli.py compares)."""
    import torch

    requested = int(env["OMP_NUM_THREADS"]) if env.get("OMP_NUM_THREADS") else DEFAULT_THREADS
    torch.set_num_threads(min(requested, DEFAULT_THREADS))
