"""Measure the per-element sensitivity |θ·g| of a transformer_iwslt_de_en, to choose SAGE's ε.

A randomly initialised fairseq ``transformer_iwslt_de_en`` (shared decoder embeddings, 8k vocabulary)
is trained with Adam on synthetic batches (128 sentences × 30 Zipf-distributed tokens, the target the
reversed source; loss summed and divided by the token count, as fairseq's criterion and trainer do).
At the updates given, it prints the fraction of elements whose |θ·g| is exactly 0 and quantiles of the
others. The README quotes the output of ``python benchmarks/sensitivity_magnitude.py``.
"""

import argparse

import torch
import torch.nn.functional as F

from fairseq_sage.quiet import quiet_entry

QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99)


def build_model(vocab_size: int):
    from fairseq.data import Dictionary  # imported here, after quiet_entry() (see the end of the file)
    from fairseq.models.transformer import TransformerModel, transformer_iwslt_de_en

    dictionary = Dictionary()
    for i in range(vocab_size):
        dictionary.add_symbol(f"t{i}")
    args = argparse.Namespace(
        share_decoder_input_output_embed=True, max_source_positions=256, max_target_positions=256
    )
    transformer_iwslt_de_en(args)
    task = argparse.Namespace(source_dictionary=dictionary, target_dictionary=dictionary)
    return TransformerModel.build_model(args, task), dictionary


def synthetic_batch(dictionary, sentences: int, length: int, generator):
    """Zipf-distributed source tokens; the target is the source reversed."""
    words = len(dictionary) - dictionary.nspecial
    zipf = 1.0 / torch.arange(1, words + 1, dtype=torch.float)
    src = torch.multinomial(zipf, sentences * length, replacement=True, generator=generator)
    src = src.view(sentences, length) + dictionary.nspecial
    tgt = src.flip(1)
    prev = torch.cat([torch.full((sentences, 1), dictionary.eos()), tgt[:, :-1]], 1)
    return src, prev, tgt


def sensitivity_summary(model) -> str:
    sensitivity = torch.cat([(p.detach() * p.grad).abs().flatten() for p in model.parameters()])
    nonzero = sensitivity[sensitivity > 0]
    sample = nonzero[torch.randperm(nonzero.numel())[:1_000_000]]
    quantiles = torch.quantile(sample, torch.tensor(QUANTILES))
    shown = ", ".join(f"p{round(q * 100)} {v:.1e}" for q, v in zip(QUANTILES, quantiles.tolist()))
    return f"zero {(sensitivity == 0).float().mean():.1%}; {shown}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, nargs="+", default=[0, 10])
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model, dictionary = build_model(args.vocab_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.98))
    for update in range(max(args.updates) + 1):
        src, prev, tgt = synthetic_batch(dictionary, 128, 30, generator)
        logits, _ = model(src, torch.full((src.size(0),), src.size(1)), prev)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), tgt.reshape(-1), reduction="sum")
        optimizer.zero_grad()
        (loss / tgt.numel()).backward()
        if update in args.updates:
            print(f"after {update:3d} updates: |θ·g| {sensitivity_summary(model)}", flush=True)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (update + 1) / args.warmup)
        optimizer.step()


if __name__ == "__main__":
    quiet_entry()
    main()
