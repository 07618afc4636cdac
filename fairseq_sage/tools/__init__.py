"""Command-line tools around trained fairseq models.

- :mod:`.average_checkpoints`: ``fairseq-sage-average-checkpoints`` (the last N checkpoints' mean);
- :mod:`.analysis`: ``fairseq-sage-analyze`` (sensitivity by layer type, pruning curves).
"""
