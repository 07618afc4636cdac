"""What importing the package changes: fairseq_sage.optim nothing global, the plugin only its registration."""

import json
import subprocess
import sys

TORCH_DECAY_RULES = sorted(
    f"torch.optim.{name}" for name in ("Adam", "NAdam", "RAdam", "Adafactor", "SGD", "Adagrad", "Adadelta", "RMSprop", "Adamax")
)
FAIRSEQ_DECAY_RULES = sorted(
    ["fairseq.optim.adam.Adam", "fairseq.optim.adamax.Adamax", "fairseq.optim.nag.NAG", "fairseq.optim.adafactor.Adafactor"]
)

REPORT = """
import json, sys, torch
{imports}
from fairseq_sage.optim.wrapper import DECAY_RULES
names = {{getattr(torch.optim, c.__name__, None) is c and f"torch.optim.{{c.__name__}}" or f"{{c.__module__}}.{{c.__qualname__}}"
         for c in DECAY_RULES}}
print(json.dumps({{"rules": sorted(names), "fairseq": "fairseq" in sys.modules}}))
"""


def decay_rules_after(imports: str) -> dict:
    """The DECAY_RULES classes (by import path) and whether fairseq got imported, in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", REPORT.format(imports=imports)], capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_the_package_and_optim_leaves_decay_rules_as_optim_defines_them():
    state = decay_rules_after("import fairseq_sage, fairseq_sage.optim\nfrom fairseq_sage import SAGE, AdamSAGE")
    assert state == {"rules": TORCH_DECAY_RULES, "fairseq": False}


def test_the_plugins_registration_adds_fairseqs_optimizers_only():
    state = decay_rules_after("import fairseq_sage.fairseq")
    assert state["fairseq"]
    assert state["rules"] == sorted(TORCH_DECAY_RULES + FAIRSEQ_DECAY_RULES)
