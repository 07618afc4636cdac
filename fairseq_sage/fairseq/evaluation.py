"""fairseq's ``eval()`` replaced by the safe evaluator, so that no configuration string runs as code.

fairseq evaluates some configuration strings with the built-in ``eval()``
(:data:`fairseq_sage.config_values.EVALUATED_FIELDS`). The checkpoint loader already turns every
such field of a checkpoint into a plain literal or refuses it; as a second line of defence, every
loaded ``fairseq`` module gets a module-level ``eval`` that is
:func:`fairseq_sage.config_values.evaluate_like_eval`, which Python finds before the built-in one:
a field evaluated somewhere the list does not know of still cannot run code. The command line's
values fairseq evaluates (``--adam-betas '(0.9, 0.98)'``, fconv's ``--encoder-layers
'[(512, 3)] * 20'``, ``--decoder-attention True``) are plain values and evaluate as before.
"""

import sys

from ..config_values import evaluate_like_eval

__all__ = ["replace_eval_in_fairseq"]


def replace_eval_in_fairseq() -> None:
    """Give every loaded ``fairseq`` / ``fairseq.*`` module the safe ``eval``, except a module that
    defines a name ``eval`` of its own (none does in fairseq's releases). Modules imported later are
    covered by calling this again: the plugin does at import and before each checkpoint load."""
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "fairseq" or name.startswith("fairseq.")):
            continue
        if vars(module).get("eval", evaluate_like_eval) is evaluate_like_eval:
            module.eval = evaluate_like_eval
