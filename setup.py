"""fairseq-sage: SAGE optimizers (Liang et al., ICLR 2022) as a fairseq plugin and for PyTorch."""

from setuptools import find_packages, setup

setup(
    name="fairseq-sage",
    version="0.1.0",
    description="SAGE (sensitivity-guided adaptive learning rate) optimizers for fairseq NMT",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["fairseq_sage", "fairseq_sage.*"]),
    package_data={"fairseq_sage.optim": ["csrc/*.cpp"]},  # the fused CPU kernel, compiled at first use
    install_requires=[
        "torch>=2.5",
        # fairseq 0.12.2 (the last release) cannot be imported on Python >= 3.11; ve-fairseq is a
        # build of fairseq's main branch with wheels for 3.11 and 3.12. Both provide `import fairseq`.
        'fairseq==0.12.2; python_version < "3.11"',
        've-fairseq==0.12.3; python_version >= "3.11"',
        # Both fairseq builds also require torchaudio, which only their speech tasks import (lazily).
        # No torchaudio release matches torch 2.13 (the last, 2.11.1, is built for torch 2.11 and its
        # compiled library fails to load with newer torch), and Hugging Face Transformers imports
        # torchaudio whenever it is installed, so a broken one breaks `import transformers`. Pinning
        # torch back to 2.11 would give up the torch this project is developed and measured on, so
        # the environment that `make` creates (scripts/setup_venv.sh) keeps torchaudio only where
        # `import torchaudio` works and uninstalls it otherwise; setup.py cannot drop a dependency of
        # a dependency, so a manual install does the same step (README, "Manual installation").
        "sacrebleu>=2.0",
    ],
    extras_require={
        "recipes": ["sacremoses>=0.1", "subword-nmt>=0.3.8", "sentencepiece>=0.1.99", "matplotlib>=3.5"],
        "analysis": ["matplotlib>=3.5", "scipy>=1.7"],  # scipy: the studies' t-intervals
        "test": [
            "pytest>=7", "matplotlib>=3.5", "scipy>=1.7", "pydantic>=2", "submitit>=1.5", "sacremoses>=0.1", "subword-nmt>=0.3.8", "sentencepiece>=0.1.99",
            "fairscale>=0.4.13",  # --zero-sharding os
            "pytest-xdist>=3",  # make test runs the files on every core (-n auto --dist loadfile)
        ],
        # SAGE in Hugging Face's Seq2SeqTrainer and in PyTorch Lightning (README, tests/test_hf_lightning.py)
        # fairseq-sage-study (docs/study.md): its configuration schema, statistics, figures, SLURM launcher
        "study": ["pydantic>=2", "scipy>=1.7", "matplotlib>=3.5", "submitit>=1.5"],
        "hf": ["transformers>=4.46", "accelerate>=1.0", "lightning>=2.2"],
    },
    entry_points={
        "console_scripts": [
            # each entry quiets fairseq's import-time noise before running the tool (fairseq_sage/quiet.py)
            "fairseq-sage-average-checkpoints=fairseq_sage.tools.entry_points:average_checkpoints",
            "fairseq-sage-analyze=fairseq_sage.tools.entry_points:analyze",
            "fairseq-sage-study=fairseq_sage.tools.entry_points:study",
        ]
    },
)
