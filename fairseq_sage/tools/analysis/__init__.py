"""Sensitivity and pruning analysis of trained fairseq translation models.

- :mod:`.sensitivity`: |θ·g| of every weight averaged over batches, grouped by layer type;
- :mod:`.pruning`: one-shot pruning of the least sensitive (or smallest) weights;
- :mod:`.zero_sensitivity`: why a weight's sensitivity is zero (dead ReLU units, unused embedding rows);
- :mod:`.bleu`: BLEU of a model on a data-bin subset (fairseq beam search, sacreBLEU);
- :mod:`.report`: CSV tables and PNG figures;
- :mod:`.cli`: ``python -m fairseq_sage.tools.analysis DATA_BIN --path CHECKPOINT`` (``cli_main``).
"""
