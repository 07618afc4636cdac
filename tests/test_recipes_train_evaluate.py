"""The train/evaluate steps of recipes/iwslt14_de_en and recipes/wmt16_en_de on tiny synthetic data.

Each test lays out WORKDIR as the recipe's prepare.sh would (BPE text, tokenized references,
fairseq-preprocess'd data-bin), runs train.sh with a tiny transformer appended to the recipe's
flags, then evaluate.sh, and checks the configuration fairseq recorded and the scores written.
"""

import importlib.util
import os
import random
import re
import subprocess
import sys

import pytest
import sacrebleu
import torch

from fairseq_sage.checkpoints import load_checkpoint

from conftest import REPO, TINY_TRANSFORMER, run_fairseq
from forked_cli import python_shim

RECIPES = REPO / "recipes"
# the tiny sizes without conftest's "--arch transformer": the recipe's architecture stays
TINY_SIZES = TINY_TRANSFORMER[TINY_TRANSFORMER.index("--arch") + 2 :]
FAST_TRAINING = [*TINY_SIZES, "--warmup-updates", "10", "--num-workers", "0", "--seed", "2"]
SOURCE_WORDS = [f"q{i}" for i in range(12)]
TARGET_PREFIX = "so it is that "
# bound the output length of the barely trained models (fairseq's default allows 200 tokens)
SHORT_OUTPUT = ["--max-len-a", "1.2", "--max-len-b", "10"]


def run_recipe(script, *args, env=None):
    """Run ``bash recipes/SCRIPT ARGS`` from outside the repository; return the finished process."""
    environment = {**os.environ, "PYTHON": str(python_shim()), **(env or {})}  # its Python commands forked
    return subprocess.run(
        ["bash", str(RECIPES / script), *map(str, args)],
        cwd="/", env=environment, capture_output=True, text=True,
    )  # fmt: skip


def check_ok(process):
    assert process.returncode == 0, f"{process.stdout[-3000:]}\n{process.stderr[-5000:]}"
    return process


def fake_bpe(line):
    """Split every token longer than two characters as subword-nmt would: ``q11`` -> ``q1@@ 1``."""
    return " ".join(f"{w[:2]}@@ {w[2:]}" if len(w) > 2 else w for w in line.split())


def write_corpus(text_dir, tmp_dir, src, tgt, sizes, seed=0):
    """A word-by-word translation task (q<i> -> <i>th target word), in BPE form like prepare.sh.

    Writes TEXT_DIR/{train,valid,test}.{src,tgt} (BPE) and TMP_DIR/test.{tgt} (tokenized, no
    BPE); targets start with a fixed phrase (which a tiny model learns within a few dozen
    updates, so BLEU is not 0), end with " ." and some contain a hyphenated compound.
    Returns the raw (detokenized) test targets.
    """
    rng = random.Random(seed)
    target_words = [f"w{i}" for i in range(10)] + ["ab-cd", "x-y-z"]
    tmp_dir.mkdir(parents=True, exist_ok=True)
    raw_test = []
    for split, size in sizes.items():
        sources, targets = [], []
        for _ in range(size):
            ids = [rng.randrange(len(SOURCE_WORDS)) for _ in range(rng.randint(3, 7))]
            sources.append(" ".join(SOURCE_WORDS[i] for i in ids) + " .")
            targets.append(TARGET_PREFIX + " ".join(target_words[i] for i in ids) + " .")
        (text_dir / f"{split}.{src}").write_text("".join(fake_bpe(s) + "\n" for s in sources))
        (text_dir / f"{split}.{tgt}").write_text("".join(fake_bpe(t) + "\n" for t in targets))
        if split == "test":
            (tmp_dir / f"test.{tgt}").write_text("".join(t + "\n" for t in targets))
            raw_test = [t[:-2] + "." for t in targets]
    return raw_test


def binarize(text_dir, bin_dir, src, tgt, joined):
    run_fairseq(
        "preprocess", "--source-lang", src, "--target-lang", tgt,
        "--trainpref", text_dir / "train", "--validpref", text_dir / "valid",
        "--testpref", text_dir / "test", "--destdir", bin_dir, "--workers", "1",
        *(["--joined-dictionary"] if joined else []),
    )  # fmt: skip


@pytest.fixture(scope="module")
def iwslt_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("iwslt")
    text = workdir / "iwslt14.tokenized.de-en"
    text.mkdir()
    write_corpus(text, text / "tmp", "de", "en", {"train": 300, "valid": 20, "test": 30})
    binarize(text, workdir / "data-bin" / "iwslt14.tokenized.de-en", "de", "en", joined=False)
    return workdir


@pytest.fixture(scope="module")
def wmt_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("wmt")
    text = workdir / "wmt16_en_de"
    text.mkdir()
    raw_test = write_corpus(text, text / "tmp", "en", "de", {"train": 200, "valid": 20, "test": 25})
    (text / "tmp" / "newstest2014.de").write_text("".join(line + "\n" for line in raw_test))
    binarize(text, workdir / "data-bin" / "wmt16_en_de", "en", "de", joined=True)
    return workdir


def model_setting(cfg, name):
    """cfg.model.NAME of a checkpoint (a Namespace for fairseq's named architectures, else a dict)."""
    model = cfg["model"]
    return model[name] if isinstance(model, dict) else getattr(model, name)


def read_results(path):
    """The `results` file of evaluate.sh as {label: value text}."""
    return dict(line.split(": ", 1) for line in path.read_text().splitlines())


def sacrebleu_score(line):
    """The score in sacreBLEU's text format, ``BLEU|nrefs:1|...|version:2.6.0 = 12.34 45.6/...``."""
    match = re.fullmatch(r"BLEU\|nrefs:1\|case:mixed\|eff:no\|tok:13a\|smooth:exp\|version:[\d.]+ = ([\d.]+) .*", line)
    assert match, line
    return float(match.group(1))


IWSLT_TINY_RUN = [*FAST_TRAINING, "--lr", "1e-2", "--max-tokens", "200", "--max-epoch", "6"]


def test_iwslt_adam_sage_train_and_evaluate(iwslt_workdir):
    trained = check_ok(run_recipe("iwslt14_de_en/train.sh", iwslt_workdir, *IWSLT_TINY_RUN))
    save_dir = iwslt_workdir / "checkpoints" / "iwslt14_adam_sage"
    assert f"training adam_sage, log: {save_dir / 'train.log'}" in trained.stdout
    assert "--optimizer adam_sage --lr 1e-3 --sage-beta0 0.8 " in (save_dir / "train.log").read_text()
    cfg = load_checkpoint(str(save_dir / "checkpoint_best.pt"))["cfg"]
    assert model_setting(cfg, "arch") == "transformer_iwslt_de_en"
    assert model_setting(cfg, "share_decoder_input_output_embed") is True
    assert model_setting(cfg, "dropout") == 0.3
    assert model_setting(cfg, "encoder_embed_dim") == 32
    assert cfg["optimizer"]["_name"] == "adam_sage"
    assert cfg["optimizer"]["sage_beta0"] == 0.8
    assert cfg["optimizer"]["weight_decay"] == 0.0001
    assert cfg["optimization"]["lr"] == [0.01]  # appended flags win
    assert cfg["lr_scheduler"]["_name"] == "inverse_sqrt"
    assert cfg["lr_scheduler"]["warmup_updates"] == 10
    assert cfg["criterion"]["label_smoothing"] == 0.1
    assert cfg["checkpoint"]["best_checkpoint_metric"] == "loss"
    assert (save_dir / "train.log").stat().st_size > 0

    again = check_ok(run_recipe("iwslt14_de_en/train.sh", iwslt_workdir, *IWSLT_TINY_RUN))
    assert "skip training adam_sage: already done" in again.stdout

    evaluated = check_ok(run_recipe("iwslt14_de_en/evaluate.sh", iwslt_workdir, *SHORT_OUTPUT))
    out = iwslt_workdir / "results" / "iwslt14_adam_sage"
    results = read_results(out / "results")
    tokenized_bleu = float(results["tokenized BLEU (fairseq-generate, beam 5, lowercased, the paper's metric)"])
    detokenized_bleu = sacrebleu_score(results["sacreBLEU (detokenized)"])
    assert "Generate test with beam=5" in (out / "generate.out").read_text()
    hypotheses = (out / "hyp.tok").read_text().splitlines()
    references = (iwslt_workdir / "iwslt14.tokenized.de-en" / "tmp" / "test.en").read_text().splitlines()
    assert len(hypotheses) == len(references) == 30
    by_id = dict(line[2:].split("\t", 2)[::2] for line in (out / "generate.out").read_text().splitlines()
                 if line.startswith("H-"))
    assert hypotheses == [by_id[str(i)] for i in range(30)], "hyp.tok is not in test-set order"
    assert not any("@@" in h for h in hypotheses)
    # fairseq's tokenized BLEU is plain corpus BLEU of hyp.tok against the tokenized references
    independent = sacrebleu.corpus_bleu(hypotheses, [references], tokenize="none", smooth_method="none")
    assert tokenized_bleu > 5, "the tiny model should have learnt at least the fixed phrase"
    assert tokenized_bleu == pytest.approx(independent.score, abs=0.01)
    detokenized_hypotheses = (out / "hyp.detok").read_text().splitlines()
    detokenized_references = (out / "ref.detok").read_text().splitlines()
    assert detokenized_references[0] == references[0][:-2] + "."  # "w1 w2 ." -> "w1 w2."
    expected = sacrebleu.corpus_bleu(detokenized_hypotheses, [detokenized_references]).score
    assert detokenized_bleu == pytest.approx(expected, abs=0.01)
    assert "tokenized BLEU" in evaluated.stdout

    rerun = check_ok(run_recipe("iwslt14_de_en/evaluate.sh", iwslt_workdir, *SHORT_OUTPUT))
    assert "skip evaluation" in rerun.stdout


def test_iwslt_adam_settings(iwslt_workdir):
    check_ok(run_recipe(
        "iwslt14_de_en/train.sh", iwslt_workdir, *FAST_TRAINING, "--max-update", "2",
        env={"OPTIMIZER": "adam"},
    ))  # fmt: skip
    cfg = load_checkpoint(str(iwslt_workdir / "checkpoints" / "iwslt14_adam" / "checkpoint_best.pt"))["cfg"]
    assert cfg["optimizer"]["_name"] == "adam"
    assert cfg["optimization"]["lr"] == [0.0005]


def test_recipe_errors_are_one_clear_line(tmp_path, iwslt_workdir):
    missing = run_recipe("iwslt14_de_en/train.sh", tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f"error: {tmp_path}/data-bin/iwslt14.tokenized.de-en has no binarized data; "
        f"run recipes/iwslt14_de_en/prepare.sh {tmp_path} first"
    )
    wrong = run_recipe("iwslt14_de_en/train.sh", iwslt_workdir, env={"OPTIMIZER": "sgd"})
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == "error: OPTIMIZER=sgd: must be adam_sage or adam"
    untrained = run_recipe("wmt16_en_de/evaluate.sh", tmp_path)
    assert untrained.returncode == 1
    assert "checkpoint_last.pt missing; run OPTIMIZER=adam_sage recipes/wmt16_en_de/train.sh" in untrained.stderr


def test_wmt_train_average_evaluate(wmt_workdir):
    trained = check_ok(run_recipe(
        "wmt16_en_de/train.sh", wmt_workdir, *FAST_TRAINING, env={"MAX_EPOCH": "3"}
    ))  # fmt: skip
    assert "0 GPU(s): --max-tokens 4096 --update-freq 8" in trained.stdout
    save_dir = wmt_workdir / "checkpoints" / "wmt16_adam_sage"
    epochs = [load_checkpoint(str(save_dir / f"checkpoint{e}.pt")) for e in (1, 2, 3)]
    cfg = epochs[-1]["cfg"]
    assert model_setting(cfg, "arch") == "transformer_wmt_en_de"
    assert model_setting(cfg, "share_all_embeddings") is True
    assert model_setting(cfg, "dropout") == 0.1
    assert cfg["optimizer"]["_name"] == "adam_sage"
    assert cfg["optimizer"]["sage_beta0"] == 0.4
    assert cfg["optimization"]["lr"] == [0.002]
    assert cfg["optimization"]["update_freq"] == [8]
    assert cfg["optimization"]["max_epoch"] == 3
    assert cfg["dataset"]["max_tokens"] == 4096
    assert cfg["common"]["fp16"] is False

    too_many = run_recipe("wmt16_en_de/evaluate.sh", wmt_workdir, env={"NUM_AVG": "5"})
    assert too_many.returncode != 0
    assert "asked to average 5 checkpoints but" in too_many.stderr and "only 3" in too_many.stderr

    check_ok(run_recipe("wmt16_en_de/evaluate.sh", wmt_workdir, *SHORT_OUTPUT, env={"NUM_AVG": "3"}))
    averaged = load_checkpoint(str(save_dir / "checkpoint.avg3.pt"))["model"]
    key = "encoder.embed_tokens.weight"
    expected = sum(state["model"][key].double() for state in epochs) / 3
    assert torch.allclose(averaged[key].double(), expected, atol=1e-6)

    out = wmt_workdir / "results" / "wmt16_adam_sage"
    results = read_results(out / "results")
    split_bleu = results["tokenized BLEU with compound splitting (beam 4, lenpen 0.6)"]
    assert re.fullmatch(r"BLEU4 = [\d.]+, [\d./]+ \(BP=[\d.]+, ratio=[\d.]+, syslen=\d+, reflen=\d+\)", split_bleu)
    # reflen counts the references after compound splitting: each "ab-cd" is 3 tokens
    references = (wmt_workdir / "wmt16_en_de" / "tmp" / "newstest2014.de").read_text()
    compounds = references.count("ab-cd") + references.count("x-y-z")
    tokens = sum(len(line.split()) + 1 for line in references.splitlines())  # "w3." -> "w3 ."
    assert f"reflen={tokens + 2 * compounds}" in split_bleu
    sacrebleu_score(results["sacreBLEU (detokenized, raw newstest2014 reference)"])
    assert len((out / "hyp.detok").read_text().splitlines()) == 25


def load_compound_split_bleu():
    path = RECIPES / "wmt16_en_de" / "compound_split_bleu.py"
    spec = importlib.util.spec_from_file_location("compound_split_bleu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compound_splitting_matches_the_perl_rule():
    split_compounds = load_compound_split_bleu().split_compounds
    assert split_compounds("das Café-Liebhaber Haus") == "das Café ##AT##-##AT## Liebhaber Haus"
    # non-overlapping matches, as perl's s{(\S)-(\S)}{...}g: the second hyphen of a-b-c stays
    assert split_compounds("a-b-c") == "a ##AT##-##AT## b-c"
    assert split_compounds("- -x y- z -") == "- -x y- z -"
    assert split_compounds("2-3 Jahre") == "2 ##AT##-##AT## 3 Jahre"


def test_compound_split_bleu_against_hand_computed_values(tmp_path):
    module = load_compound_split_bleu()
    identical = module.compound_split_bleu(["Café-Liebhaber ist hier"], ["Café-Liebhaber ist hier"])
    assert identical.score == pytest.approx(100.0)
    assert (identical.sys_len, identical.ref_len) == (5, 5)
    # 5 tokens, the last one wrong: precisions 4/5, 3/4, 2/3, 1/2, brevity penalty 1
    score = module.compound_split_bleu(["a b c d f"], ["a b c d e"])
    assert score.score == pytest.approx(100 * (0.8 * 0.75 * (2 / 3) * 0.5) ** 0.25, abs=1e-9)
    # splitting "x-y" into three tokens turns a 2-token hypothesis into a 4-token exact match
    assert module.compound_split_bleu(["x-y z ."], ["x-y z ."]).sys_len == 5

    generate_out = tmp_path / "generate.out"
    generate_out.write_text(
        "S-1\tsource one\nT-1\tb-c d\nH-1\t-0.5\tb-c d\nD-1\t-0.5\tb-c d\n"
        "S-0\tsource zero\nT-0\ta b\nH-0\t-0.1\ta b\n"
        "Generate test with beam=4: BLEU4 = 100.00, 100.0/100.0/100.0/100.0 (BP=1.000)\n"
    )
    hypotheses, references = module.read_generate_output(generate_out)
    assert hypotheses == ["a b", "b-c d"] and references == ["a b", "b-c d"]
    completed = subprocess.run(
        [sys.executable, str(RECIPES / "wmt16_en_de" / "compound_split_bleu.py"), str(generate_out)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert completed.stdout.startswith("BLEU4 = 100.00, 100.0/100.0/100.0/100.0 (BP=1.000, ratio=1.000, syslen=6, reflen=6)")

    generate_out.write_text("T-0\ta b\nT-1\tc\nH-0\t-0.1\ta b\n")
    with pytest.raises(ValueError, match="1 hypotheses .* for 2 references"):
        module.read_generate_output(generate_out)
