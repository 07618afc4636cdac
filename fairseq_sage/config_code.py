"""Which strings of a checkpoint's configuration are code rather than values.

fairseq hands some configuration strings to Python's ``eval()`` while it builds a model or an
optimizer (``fairseq.utils.eval_str_list``, ``eval_str_dict``, ``eval_bool``, ``eval(cfg.adam_betas)``
and about thirty other call sites), and OmegaConf resolves ``${...}`` interpolations through
registered functions. A checkpoint whose configuration holds such a string could make those run
whatever it likes, although its pickle holds nothing but primitive types. Rather than tracking
which fields fairseq evaluates, every string (and ``bytes``, which ``eval()`` also accepts) of the
configuration is examined, and it counts as code when evaluating it could call something:

- a Python literal (``ast.literal_eval``: ``'(0.9, 0.98)'``, ``'[20]'``, ``'1e-7'``, ``'{}'``) is a value;
- a string that is not a Python expression (``'/data/bin'``, ``'@@ '``, ``''``) is a value: ``eval()``
  stops at once with a SyntaxError;
- an expression made only of names, attribute names, literals and operators that cannot make
  anything large (``'transformer'``, ``'checkpoint_last.pt'``, ``'data-bin/iwslt14.tokenized.de-en'``,
  which ``eval()`` reads as a subtraction and a division of names) is a value: evaluating it looks
  names up and stops with a NameError, without calling anything;
- anything else is code: a call (``"__import__('os').system('...')"``), a subscript, a lambda, a
  comprehension, an f-string, ``*`` / ``**`` / ``<<`` / ``%`` (which can make an arbitrarily large
  object from a short string), an OmegaConf interpolation, or an expression nested too deep to parse.
"""

import argparse
import ast
from typing import Any, Iterator, Optional, Tuple

__all__ = ["is_code", "find_code"]

CONFIGURATION_KEYS = ("cfg", "args")
"""The entries of a fairseq checkpoint that hold its configuration: ``cfg`` (a dict since fairseq
0.10) and ``args`` (the ``argparse.Namespace`` of older checkpoints)."""

HARMLESS_NODES = (
    ast.Expression, ast.Constant, ast.Name, ast.Attribute, ast.Load,
    ast.Tuple, ast.List, ast.Set, ast.Dict,
    ast.UnaryOp, ast.unaryop, ast.BinOp, ast.BoolOp, ast.boolop, ast.Compare, ast.cmpop, ast.IfExp,
    ast.Add, ast.Sub, ast.Div, ast.FloorDiv, ast.MatMult, ast.BitAnd, ast.BitOr, ast.BitXor, ast.RShift,
)
"""The syntax an expression that is a value may use: nothing here calls a function or builds an
object larger than the string (``ast.Mult``, ``ast.Pow``, ``ast.LShift`` and ``ast.Mod`` are absent)."""


def is_code(text: str) -> bool:
    """Whether evaluating ``text`` with ``eval()`` (or resolving it in OmegaConf) could run code."""
    if "${" in text:
        return True
    try:
        ast.literal_eval(text)
        return False
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):  # ValueError: a NUL byte, which eval() refuses the same way
        return False
    except (MemoryError, RecursionError):
        return True
    return not all(isinstance(node, HARMLESS_NODES) for node in ast.walk(tree))


def _strings(value: Any, where: str) -> Iterator[Tuple[str, str]]:
    """(where, text) for every string in ``value``: dicts, lists, tuples, sets and Namespaces, nested."""
    if isinstance(value, (str, bytes, bytearray)):
        yield where, value if isinstance(value, str) else bytes(value).decode("latin-1")
    elif isinstance(value, argparse.Namespace):
        yield from _strings(vars(value), where)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple, set, frozenset)):
        for index, item in enumerate(value):
            yield from _strings(item, f"{where}[{index}]")


def find_code(state: Any) -> Optional[str]:
    """The first field of a loaded checkpoint's configuration that holds code (``cfg.model.X``,
    ``args.X``, ``cfg.task.Y[0]``), or None."""
    if not isinstance(state, dict):
        return None
    for key in CONFIGURATION_KEYS:
        for where, text in _strings(state.get(key), key):
            if is_code(text):
                return where
    return None
