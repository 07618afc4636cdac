"""fairseq-sage: SAGE (sensitivity-guided adaptive learning rate) optimizers for PyTorch and fairseq.

``from fairseq_sage import AdamSAGE, AdamaxSAGE, SGDSAGE`` works without fairseq. Where fairseq is
installed, importing this package (as ``--user-dir`` does) also registers ``--optimizer adam_sage |
adamax_sage | sgd_sage`` and lets torch >= 2.6 load fairseq checkpoints safely
(:mod:`fairseq_sage.checkpoints`).
"""

import importlib.util

from .optimizers import DEFAULT_SAGE_EPS, AdamaxSAGE, AdamSAGE, SGDSAGE

__all__ = ["AdamSAGE", "AdamaxSAGE", "SGDSAGE", "DEFAULT_SAGE_EPS"]
__version__ = "0.1.0"

if importlib.util.find_spec("fairseq") is not None:
    from . import checkpoints, fairseq_optim  # noqa: F401  (registers with fairseq)
