"""fairseq's ``eval()`` replaced by the safe evaluator, so that no configuration string runs as code.

fairseq evaluates some configuration strings with the built-in ``eval()``
(:data:`fairseq_sage.config_values.EVALUATED_FIELDS`). The checkpoint loader already turns every
such field of a checkpoint into a plain literal or refuses it; as a second line of defence, every
loaded module of ``fairseq`` and ``fairseq_cli`` gets a module-level ``eval`` that is
:func:`fairseq_sage.config_values.evaluate_like_eval`, which Python finds before the built-in one:
a field evaluated somewhere the list does not know of still cannot run code. The command line's
values fairseq evaluates (``--adam-betas '(0.9, 0.98)'``, fconv's ``--encoder-layers
'[(512, 3)] * 20'``, ``--decoder-attention True``) are plain values and evaluate as before.
"""

import sys

from ..config_values import evaluate_like_eval

__all__ = ["replace_eval_in_fairseq"]


PACKAGES = ("fairseq", "fairseq_cli")
"""The packages whose modules get the safe ``eval``: fairseq and its command-line programs."""


def _is_fairseq_module(module) -> bool:
    """Whether ``module`` belongs to :data:`PACKAGES`, also where it runs as ``__main__``
    (``python -m fairseq_cli.eval_lm``), which only its spec names."""
    name = getattr(getattr(module, "__spec__", None), "name", None) or getattr(module, "__name__", "")
    return any(name == package or name.startswith(package + ".") for package in PACKAGES)


def replace_eval_in_fairseq() -> None:
    """Give every loaded module of fairseq and fairseq_cli the safe ``eval``, except a module that
    defines a name ``eval`` of its own (none does in fairseq's releases). Modules imported later are
    covered by calling this again: the plugin does at import and before each checkpoint load."""
    for module in list(sys.modules.values()):
        if module is None or not _is_fairseq_module(module):
            continue
        if vars(module).get("eval", evaluate_like_eval) is evaluate_like_eval:
            module.eval = evaluate_like_eval
