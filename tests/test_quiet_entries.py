"""Every console script and ``python -m`` entry prints only its own output and real warnings."""

import re
import subprocess
import sys

import pytest

from conftest import REPO

NOISE = re.compile(r"^(DEBUG|INFO)\b|FutureWarning|DeprecationWarning|Please install", re.MULTILINE)
"""What fairseq's import prints unless the entry is quiet: log records below WARNING (matplotlib's
font search, fairseq's tensorboardX note) and third-party deprecation warnings."""


def console_scripts():
    """(name, module, function) of each console script setup.py declares."""
    setup = (REPO / "setup.py").read_text()
    return re.findall(r'"([\w-]+)=([\w.]+):(\w+)"', setup)


def package_main_modules():
    """Every ``python -m`` entry of the package: its __main__.py files and modules run as __main__."""
    modules = []
    for path in sorted((REPO / "fairseq_sage").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if path.name == "__main__.py":
            modules.append(".".join(parts[:-1]))
        elif 'if __name__ == "__main__":' in path.read_text():
            modules.append(".".join(parts))
    return modules


BENCHMARKS_WITH_FAIRSEQ = ["benchmarks.sensitivity_magnitude", "benchmarks.sage_speed", "benchmarks.wrapper_overhead",
                           "benchmarks.gpu_check"]
"""The benchmarks' entries that import fairseq (the others import neither fairseq nor matplotlib)."""


def run(argv):
    proc = subprocess.run([sys.executable, *argv, "--help"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout + proc.stderr


def test_the_package_declares_the_entries_it_has():
    assert [name for name, _, _ in console_scripts()] == ["fairseq-sage-average-checkpoints", "fairseq-sage-analyze",
                                                         "fairseq-sage-study"]
    assert package_main_modules() == ["fairseq_sage.tools.analysis", "fairseq_sage.tools.average_checkpoints",
                                      "fairseq_sage.tools.study"]


@pytest.mark.parametrize("name, module, function", console_scripts(), ids=lambda v: v if "-" in str(v) else "")
def test_console_script_help_is_only_the_usage(name, module, function):
    """What the installed script runs: ``from MODULE import FUNCTION; sys.exit(FUNCTION())``."""
    output = run(["-c", f"import sys; sys.argv[0] = {name!r}; from {module} import {function}; sys.exit({function}())"])
    assert output.startswith(f"usage: {name} "), output[:2000]
    assert not NOISE.search(output), output[:2000]


@pytest.mark.parametrize("module", package_main_modules() + BENCHMARKS_WITH_FAIRSEQ)
def test_python_m_help_is_only_the_usage(module):
    output = run(["-m", module])
    assert output.startswith("usage: "), output[:2000]
    assert not NOISE.search(output), output[:2000]


def test_a_quiet_entry_still_shows_real_warnings_and_its_own_log_warnings():
    script = (
        "import logging, warnings\n"
        "from fairseq_sage.quiet import quiet_entry\n"
        "quiet_entry()\n"
        "import fairseq.models  # configures logging at import unless the entry is quiet\n"
        "logging.getLogger('matplotlib').debug('font search')\n"
        "logging.getLogger('fairseq').info('an info record')\n"
        "logging.getLogger('fairseq_sage').warning('a warning record')\n"
        "warnings.warn('a real warning')\n"
        "print('own output')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "own output\n"
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "WARNING | fairseq_sage | a warning record"
    assert lines[1].endswith("UserWarning: a real warning")
    assert not NOISE.search(proc.stderr) and "font search" not in proc.stderr and "info record" not in proc.stderr
