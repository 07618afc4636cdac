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
        "sacrebleu>=2.0",
    ],
    extras_require={
        "recipes": ["sacremoses>=0.1", "subword-nmt>=0.3.8", "sentencepiece>=0.1.99"],
        "analysis": ["matplotlib>=3.5"],
        "test": [
            "pytest>=7", "matplotlib>=3.5", "sacremoses>=0.1", "subword-nmt>=0.3.8", "sentencepiece>=0.1.99",
            "fairscale>=0.4.13",  # --zero-sharding os
        ],
    },
    entry_points={
        "console_scripts": [
            "fairseq-sage-average-checkpoints=fairseq_sage.tools.average_checkpoints:cli_main",
            "fairseq-sage-analyze=fairseq_sage.tools.analysis.cli:cli_main",
        ]
    },
)
