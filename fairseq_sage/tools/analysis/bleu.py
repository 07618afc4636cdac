"""BLEU of a fairseq translation model on a data-bin subset: fairseq's beam search, then sacreBLEU."""

from typing import List, Optional, Tuple

import sacrebleu
import torch
from fairseq import utils
from fairseq.dataclass.configs import GenerationConfig
from torch import nn

__all__ = ["GENERATION_BATCH_MULTIPLE", "translate_subset", "corpus_bleu"]

GENERATION_BATCH_MULTIPLE = 1
"""No rounding of batch sizes, as the recipes' ``fairseq-generate --required-batch-size-multiple 1``:
fairseq's default multiple of 8 drops a last batch of fewer than 8 sentences (with ``--batch-size``)."""


@torch.no_grad()
def translate_subset(
    task, model: nn.Module, subset: str, beam: int, max_tokens: int, post_process: Optional[str]
) -> Tuple[List[str], List[str]]:
    """Translate every sentence of the loaded ``subset`` with beam search; return (hypotheses,
    references) in the subset's order, as strings post-processed the way fairseq-generate does
    with ``--post-process``/``--remove-bpe`` (its ``H-`` and ``T-`` lines)."""
    model.eval()
    generator = task.build_generator([model], GenerationConfig(beam=beam))
    strip = generator.symbols_to_strip_from_output
    tgt_dict = task.target_dictionary
    device = next(model.parameters()).device
    batches = task.get_batch_iterator(
        dataset=task.dataset(subset),
        max_tokens=max_tokens,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        required_batch_size_multiple=GENERATION_BATCH_MULTIPLE,
    ).next_epoch_itr(shuffle=False)
    translations = {}
    for sample in batches:
        sample = utils.move_to_cuda(sample, device=device) if device.type == "cuda" else sample
        hypotheses = task.inference_step(generator, [model], sample)
        for i, sample_id in enumerate(sample["id"].tolist()):
            reference = utils.strip_pad(sample["target"][i], tgt_dict.pad()).int().cpu()
            translations[sample_id] = (
                tgt_dict.string(hypotheses[i][0]["tokens"].int().cpu(), post_process,
                                extra_symbols_to_ignore=strip),
                tgt_dict.string(reference, post_process, escape_unk=True, extra_symbols_to_ignore=strip),
            )
    if len(translations) != len(task.dataset(subset)):
        raise RuntimeError(f"translated {len(translations)} of the {len(task.dataset(subset))} sentences of "
                           f"{subset}; the BLEU of a part of a test set is not comparable")
    ordered = [translations[i] for i in sorted(translations)]
    return [h for h, _ in ordered], [r for _, r in ordered]


def corpus_bleu(hypotheses: List[str], references: List[str]) -> Tuple[float, str]:
    """sacreBLEU's corpus BLEU (default 13a tokenization) and its signature."""
    metric = sacrebleu.BLEU()
    return metric.corpus_score(hypotheses, [references]).score, str(metric.get_signature())
