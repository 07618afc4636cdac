"""fairseq-sage: SAGE (sensitivity-guided adaptive learning rate) optimizers for PyTorch and fairseq.

The package has three parts:

- :mod:`fairseq_sage.optim`: pure PyTorch (the base-step registry, the SAGE modulation, the optimizer
  classes and their reference / foreach / fused C++ / compiled implementations). Importing it, or
  ``from fairseq_sage import AdamSAGE``, imports nothing from fairseq and changes nothing global.
- :mod:`fairseq_sage.fairseq`: the fairseq plugin (``--optimizer adam_sage | adamax_sage | sgd_sage |
  lion_sage | nadam_sage``, their flags, ``--sage-params``, the diagnostics in training logs, the safe checkpoint
  loader).
  ``--user-dir fairseq_sage`` imports this package inside fairseq's CLIs, where fairseq is already
  imported, and so loads the plugin; a script of its own does ``import fairseq_sage.fairseq``.
- :mod:`fairseq_sage.tools`: checkpoint averaging and the sensitivity / pruning analysis CLI.

:mod:`fairseq_sage.checkpoints` (safe loading of checkpoint files) and :mod:`fairseq_sage.files`
(atomic writes) serve all three. The optimizer classes are imported at their first use, so that
``import fairseq_sage.files`` (which ``data_prep`` does) does not import torch.
"""

import sys

__all__ = ["AdamSAGE", "AdamaxSAGE", "SGDSAGE", "LionSAGE", "NAdamSAGE", "SAGE", "DEFAULT_SAGE_EPS"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in __all__:
        from . import optim

        return getattr(optim, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


if "fairseq" in sys.modules:  # loaded by fairseq (--user-dir) or after it: register the plugin
    from . import fairseq  # noqa: F401
