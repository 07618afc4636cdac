"""SAGE optimizers in pure PyTorch: nothing here imports fairseq or changes anything global.

- :mod:`.base_steps`: the registry of base optimizers (Adam, Adamax, SGD, Lion, NAdam):
  hyper-parameters, state, step as −size · numerator / denominator, its numbers at update t,
  which fused kernel implements it;
- :mod:`.hyperparameters`: a hyper-parameter's declaration (default, bound, fairseq flag), SAGE's own;
- :mod:`.validation`: the checks both the classes and the wrapper make (hyper-parameters,
  parameters, finite gradients) and the dtypes updated through float32;
- :mod:`.functional`: the SAGE multiplier (U + ε)/(Ī_c + ε);
- :mod:`.optimizers`: ``AdamSAGE``, ``AdamaxSAGE``, ``SGDSAGE``, ``LionSAGE``, ``NAdamSAGE``
  (``torch.optim.Optimizer`` classes, one per registry entry);
- :mod:`.wrapper`: ``SAGE(optimizer)``, SAGE on top of any ``torch.optim.Optimizer``;
- :mod:`.implementations`: which of the reference, foreach (:mod:`.multi_tensor`), fused C++
  (:mod:`.fused_cpu`, ``csrc/``) and compiled paths runs;
- :mod:`.diagnostics`: statistics of the multipliers, for training logs.
"""

from .hyperparameters import DEFAULT_SAGE_EPS
from .optimizers import AdamaxSAGE, AdamSAGE, LionSAGE, NAdamSAGE, SGDSAGE
from .wrapper import SAGE

__all__ = ["AdamSAGE", "AdamaxSAGE", "SGDSAGE", "LionSAGE", "NAdamSAGE", "SAGE", "DEFAULT_SAGE_EPS"]
