"""The fairseq plugin. Importing this package is its registration, the one place where the
project changes state it does not own: it registers the SAGE optimizers with fairseq (the
``register_optimizer`` decorators of :mod:`.optimizers` and :mod:`.wrapper`), adds fairseq's
optimizers to SAGE's decay rules (:func:`.wrapper.register_decay_rules`) and hardens fairseq's
checkpoint handling (:func:`.checkpoint_hardening.install_hardening`).

- :mod:`.optimizers`: ``--optimizer adam_sage | adamax_sage | sgd_sage | lion_sage | nadam_sage``
  (one per base optimizer of the registry), their flags and the diagnostics hook that logs ``sage_*`` statistics every ``--log-interval`` updates;
- :mod:`.wrapper`: ``--optimizer sage --sage-base NAME``, SAGE over any fairseq optimizer;
- :mod:`.params`: parameter names in fairseq's trainer and the groups ``--sage-params`` chooses;
- :mod:`.checkpoint_hardening`: the allow-list for fairseq's loader, verified loads, atomic copies;
- :mod:`.evaluation`: fairseq's modules evaluate configuration strings with the safe evaluator of
  :mod:`fairseq_sage.config_values` instead of the built-in ``eval()``, so that no string (from a
  checkpoint or elsewhere) runs as code;
- :mod:`.errors`: the one-line error for a flag the plugin cannot work with.

``--user-dir fairseq_sage`` imports it (through :mod:`fairseq_sage`); elsewhere,
``import fairseq_sage.fairseq`` before building fairseq's trainer does the same.
"""

from . import checkpoint_hardening, optimizers, wrapper

checkpoint_hardening.install_hardening()
wrapper.register_decay_rules()
