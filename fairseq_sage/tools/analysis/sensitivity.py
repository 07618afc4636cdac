"""Sensitivity |θ·g| of every weight of a trained model, and its distribution per layer type.

The sensitivity of a weight θ_j on a batch is I_j = |θ_j · g_j|, the first-order estimate of how
much the loss changes when θ_j is set to zero (Eq. 2 of Liang et al., ICLR 2022). g is the
gradient of the criterion's loss divided by the batch's sample size (the number of target tokens),
the gradient fairseq's trainer hands its optimizer; I is averaged over several batches.
"""

import re
from typing import Dict, Iterable, List, Tuple

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "PARAMETER_TYPES",
    "SUMMARY_QUANTILES",
    "average_sensitivity",
    "parameter_type",
    "sensitivity_by_type",
    "summarize",
]

PARAMETER_TYPES: List[Tuple[str, str]] = [
    ("embeddings", r"embed_tokens|embed_positions"),
    ("self_attn_q", r"\bself_attn\.q_proj\."),
    ("self_attn_k", r"\bself_attn\.k_proj\."),
    ("self_attn_v", r"\bself_attn\.v_proj\."),
    ("self_attn_out", r"\bself_attn\.out_proj\."),
    ("enc_dec_attn", r"\bencoder_attn\.(q|k|v|out)_proj\."),
    ("ffn_fc1", r"\bfc1\."),
    ("ffn_fc2", r"\bfc2\."),
    ("layer_norm", r"layer_?norm"),
    ("output_projection", r"\boutput_projection\."),
]
"""(type, regular expression on the parameter name) in the order they are tried and plotted; a
name that matches none is of type ``other``. Names are those of fairseq's transformer, e.g.
``encoder.layers.0.self_attn.k_proj.weight``. A weight and its bias share a type. An output
projection tied to the decoder's input embeddings is one tensor, named (and typed) as embeddings."""

SUMMARY_QUANTILES = {
    "p01": 0.01, "p10": 0.10, "p25": 0.25, "p50": 0.50, "p75": 0.75, "p90": 0.90, "p99": 0.99,
}


def parameter_type(name: str) -> str:
    """The layer type of the parameter called ``name`` (see :data:`PARAMETER_TYPES`)."""
    for kind, pattern in PARAMETER_TYPES:
        if re.search(pattern, name):
            return kind
    return "other"


def average_sensitivity(
    model: nn.Module, criterion: nn.Module, batches: Iterable[dict]
) -> Dict[str, Tensor]:
    """Mean over ``batches`` of |θ ⊙ g_b| for every trainable parameter of ``model``, by name.

    g_b is the gradient of ``criterion(model, b)``'s loss divided by its sample size. The model is
    put in eval mode (no dropout), so the result is deterministic and describes the network that is
    later pruned and evaluated. Gradients left in ``model`` are cleared.
    """
    model.eval()
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    totals = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    count = 0
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss, sample_size, _ = criterion(model, batch)
        (loss / sample_size).backward()
        with torch.no_grad():
            for name, p in params.items():
                if p.grad is not None:
                    totals[name].add_((p.float() * p.grad.float()).abs_())
        count += 1
    model.zero_grad(set_to_none=True)
    if count == 0:
        raise ValueError("no batch to compute the sensitivity on")
    return {name: total.div_(count) for name, total in totals.items()}


def sensitivity_by_type(sensitivity: Dict[str, Tensor]) -> Dict[str, np.ndarray]:
    """All sensitivity values of each layer type, flattened into one float64 array per type, in the
    order of :data:`PARAMETER_TYPES` (then ``other``); types without parameters are left out."""
    groups: Dict[str, List[np.ndarray]] = {}
    for name, values in sensitivity.items():
        flat = values.detach().cpu().double().flatten().numpy()
        groups.setdefault(parameter_type(name), []).append(flat)
    order = [kind for kind, _ in PARAMETER_TYPES] + ["other"]
    return {kind: np.concatenate(groups[kind]) for kind in order if kind in groups}


def summarize(values: np.ndarray) -> Dict[str, float]:
    """Count, fraction of zeros, mean, min, :data:`SUMMARY_QUANTILES` and max of ``values``, then
    the spread of the positive values on a log scale: the variance (population, ddof 0) and the
    interquartile range (75th minus 25th percentile, linear interpolation) of log10 of the values
    > 0 (NaN where none is), the concentration of the distribution that Fig. 2 of the paper shows."""
    quantiles = np.quantile(values, list(SUMMARY_QUANTILES.values()))
    logs = np.log10(values[values > 0])
    log_q25, log_q75 = np.quantile(logs, [0.25, 0.75]) if logs.size else (np.nan, np.nan)
    return {
        "count": int(values.size),
        "zero_fraction": float(np.mean(values == 0)),
        "mean": float(values.mean()),
        "min": float(values.min()),
        **{name: float(q) for name, q in zip(SUMMARY_QUANTILES, quantiles)},
        "max": float(values.max()),
        "log10_var": float(np.var(logs)) if logs.size else float("nan"),
        "log10_iqr": float(log_q75 - log_q25),
    }
