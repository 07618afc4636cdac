"""The parameter shapes of fairseq transformers, built from fairseq's own architecture definitions.

The vocabularies are those of fairseq's translation examples: IWSLT'14 De-En (8,848 German and
6,632 English types, ``--share-decoder-input-output-embed``) and WMT'16 En-De (one joined
32,768-type dictionary, ``--share-all-embeddings``).
"""

import argparse
from typing import Dict, List, NamedTuple, Tuple

import torch

Shape = Tuple[int, ...]


class ModelShapes(NamedTuple):
    source_vocabulary: int
    target_vocabulary: int
    share_all_embeddings: bool
    share_decoder_embeddings: bool


ARCHITECTURES: Dict[str, ModelShapes] = {
    "transformer_iwslt_de_en": ModelShapes(8848, 6632, False, True),
    "transformer_wmt_en_de": ModelShapes(32768, 32768, True, False),
}

TINY: List[Shape] = [(64, 16), (16,), (16, 16), (16,), (48, 16), (48,), (16,)]
"""A handful of small tensors for smoke tests of the benchmark itself (``--archs tiny``)."""

FLAT: List[Shape] = [(1 << 23,)]
"""One flat tensor of 8.4M parameters, as fairseq's ``--fp16`` hands all weights to the optimizer."""


def dictionary_of(size: int):
    """A fairseq dictionary with ``size`` entries (its 4 special symbols included)."""
    from fairseq.data import Dictionary

    dictionary = Dictionary()
    for i in range(size - len(dictionary)):
        dictionary.add_symbol(f"w{i}")
    return dictionary


def parameter_shapes(arch: str) -> List[Shape]:
    """The shapes of the trainable parameters of fairseq's ``arch``, in the model's order."""
    if arch in ("tiny", "flat"):
        return list(TINY if arch == "tiny" else FLAT)
    from fairseq.models import ARCH_MODEL_REGISTRY, ARCH_CONFIG_REGISTRY

    spec = ARCHITECTURES[arch]
    args = argparse.Namespace(
        share_all_embeddings=spec.share_all_embeddings,
        share_decoder_input_output_embed=spec.share_decoder_embeddings,
    )
    ARCH_CONFIG_REGISTRY[arch](args)
    source = dictionary_of(spec.source_vocabulary)
    target = source if spec.share_all_embeddings else dictionary_of(spec.target_vocabulary)
    task = argparse.Namespace(source_dictionary=source, target_dictionary=target)
    with torch.device("meta"):
        model = ARCH_MODEL_REGISTRY[arch].build_model(args, task)
    return [tuple(p.shape) for p in model.parameters() if p.requires_grad]
