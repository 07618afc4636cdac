"""Run a Python module (``python recipes/quiet.py fairseq_cli.train ARGS...``) as ``python -m`` would,
with the deprecation warnings of fairseq's dependencies silenced.

Only the exact messages of :data:`fairseq_sage.quiet.THIRD_PARTY_WARNINGS` are filtered (each matched
from its start, with its category): they come from fairseq's use of older torch, Hydra and fairscale
APIs, and nothing a recipe's user can do about them. Every other warning, this project's included,
and every error still shows. The filter is the one every entry of the package applies, read from
this checkout's ``fairseq_sage/quiet.py`` by its path: importing the ``fairseq_sage`` package here
would keep fairseq from importing it as the ``--user-dir`` (it skips a module already imported),
and so from registering the SAGE optimizers.
"""

import importlib.util
import os
import runpy
import sys

QUIET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fairseq_sage", "quiet.py")


def silence_third_party_warnings() -> None:
    """:func:`fairseq_sage.quiet.silence_third_party_warnings`, loaded from :data:`QUIET`."""
    spec = importlib.util.spec_from_file_location("fairseq_sage_quiet", QUIET)
    quiet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quiet)
    quiet.silence_third_party_warnings()


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: python recipes/quiet.py MODULE [ARGS...]")
    module = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path[0] = os.getcwd()  # as `python -m` has it, not this file's folder
    silence_third_party_warnings()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
