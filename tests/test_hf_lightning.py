"""AdamSAGE in Hugging Face's Trainer / Seq2SeqTrainer and in PyTorch Lightning (the ``hf`` extra).

A tiny MarianMT built from a config (random weights, nothing downloaded) learns to sort
sequences of token ids; each framework trains it, logs the ``sage_*`` statistics, writes a
checkpoint half-way, and a second run resumes from that checkpoint and ends where the uninterrupted
run ended.
"""

import csv

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the hf extra (pip install -e '.[hf]') is not installed")
lightning = pytest.importorskip("lightning", reason="the hf extra (pip install -e '.[hf]') is not installed")

from fairseq_sage import AdamSAGE  # noqa: E402
from fairseq_sage.hf import add_sage_statistics  # noqa: E402
from fairseq_sage.optim.diagnostics import sage_statistics  # noqa: E402

VOCABULARY, LENGTH, STEPS, BATCH = 24, 8, 40, 16
SAGE = {"lr": 1e-2, "betas": (0.9, 0.98), "beta0": 0.8, "weight_decay": 1e-4}


def tiny_marian():
    torch.manual_seed(0)
    config = transformers.MarianConfig(
        vocab_size=VOCABULARY, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_position_embeddings=LENGTH + 2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )  # fmt: skip
    return transformers.MarianMTModel(config)


class Sorting(torch.utils.data.Dataset):
    """Sequences of token ids 2..VOCABULARY-1 and, as labels, the same ids sorted."""

    def __init__(self, size=STEPS * BATCH):
        generator = torch.Generator().manual_seed(1)
        self.sources = torch.randint(2, VOCABULARY, (size, LENGTH), generator=generator)

    def __len__(self):
        return len(self.sources)

    def __getitem__(self, index):
        source = self.sources[index]
        return {"input_ids": source, "attention_mask": torch.ones_like(source), "labels": source.sort().values}


def hf_trainer(output_dir, how):
    """A Seq2SeqTrainer given an AdamSAGE instance (its ``optimizers=`` argument: transformers 5's
    Seq2SeqTrainer does not take ``optimizer_cls_and_kwargs``), or a Trainer given the class and
    its arguments; the Trainer adds its learning-rate schedule to either."""
    arguments = transformers.Seq2SeqTrainingArguments(
        output_dir=str(output_dir), max_steps=STEPS, per_device_train_batch_size=BATCH,
        logging_steps=5, save_steps=STEPS // 2, save_strategy="steps", lr_scheduler_type="linear",
        warmup_steps=5, seed=1, report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    model = tiny_marian()
    common = dict(model=model, args=arguments, train_dataset=Sorting(), callbacks=[Reporter()])
    if how == "Seq2SeqTrainer(optimizers=...)":
        trainer = transformers.Seq2SeqTrainer(**common, optimizers=(AdamSAGE(model.parameters(), **SAGE), None))
    else:
        trainer = transformers.Trainer(**common, optimizer_cls_and_kwargs=(AdamSAGE, SAGE))
    add_sage_statistics(trainer)
    return trainer


class Reporter(transformers.TrainerCallback):
    """Records what a reporting integration (report_to) would be given."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def logged_without_step(entries):
    return [{key: value for key, value in entry.items() if key != "step"} for entry in entries]


def final_weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("how", ["Seq2SeqTrainer(optimizers=...)", "Trainer(optimizer_cls_and_kwargs=...)"])
def test_hf_trainer_trains_logs_and_resumes(tmp_path, how):
    trainer = hf_trainer(tmp_path / "run", how)
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer, AdamSAGE)  # accelerate wraps the class we gave
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logged] == list(range(5, STEPS + 1, 5))
    assert logged[-1]["loss"] < 0.8 * logged[0]["loss"]
    (reporter,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, Reporter)]
    reported = [logs for logs in reporter.logs if "loss" in logs]
    assert reported == logged_without_step(logged)
    for entry in logged:
        assert 0 < entry["sage_mult_p10"] <= entry["sage_mult_p50"] <= entry["sage_mult_p90"]
        assert 0 < entry["sage_mult_mean"] < 5
    checkpoint = tmp_path / "run" / f"checkpoint-{STEPS // 2}"
    assert (checkpoint / "optimizer.pt").is_file()

    resumed = hf_trainer(tmp_path / "run", how)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    state = resumed.optimizer.optimizer.state
    assert {int(s["step"]) for s in state.values()} == {STEPS}  # the checkpoint's SAGE state was loaded
    expected, got = final_weights(trainer.model), final_weights(resumed.model)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)


class SortingModule(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = tiny_marian()

    def training_step(self, batch, batch_index):
        loss = self.model(**batch).loss
        self.log("train_loss", loss)
        return loss

    def on_before_optimizer_step(self, optimizer):
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log_dict(sage_statistics(optimizer.param_groups, optimizer.state))

    def configure_optimizers(self):
        optimizer = AdamSAGE(self.parameters(), **SAGE)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 5))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def train_dataloader(self):
        # two epochs, the checkpoint at the end of the first: a resumed run sees the same batches
        return torch.utils.data.DataLoader(Sorting(STEPS // 2 * BATCH), batch_size=BATCH)


def lightning_trainer(folder, **extra):
    return lightning.Trainer(
        max_steps=STEPS, accelerator="cpu", devices=1, log_every_n_steps=5, enable_progress_bar=False,
        enable_model_summary=False, logger=lightning.pytorch.loggers.CSVLogger(folder, name="logs"),
        callbacks=[lightning.pytorch.callbacks.ModelCheckpoint(
            dirpath=folder / "checkpoints", every_n_train_steps=STEPS // 2, save_top_k=-1)],
        **extra,
    )  # fmt: skip


def test_lightning_module_trains_logs_and_resumes(tmp_path):
    lightning.seed_everything(1)
    module = SortingModule()
    lightning_trainer(tmp_path / "run").fit(module)
    with open(tmp_path / "run" / "logs" / "version_0" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(row["train_loss"]) for row in rows if row.get("train_loss")]
    multipliers = [float(row["sage_mult_mean"]) for row in rows if row.get("sage_mult_mean")]
    assert len(losses) == len(multipliers) == STEPS // 5
    assert losses[-1] < 0.8 * losses[0]
    assert all(0 < m < 5 for m in multipliers)
    checkpoint = tmp_path / "run" / "checkpoints" / f"epoch=0-step={STEPS // 2}.ckpt"
    assert checkpoint.is_file()

    lightning.seed_everything(1)
    resumed = SortingModule()
    lightning_trainer(tmp_path / "resumed").fit(resumed, ckpt_path=str(checkpoint))
    optimizer = resumed.trainer.optimizers[0]
    assert isinstance(optimizer, AdamSAGE) and {int(s["step"]) for s in optimizer.state.values()} == {STEPS}
    expected, got = final_weights(module), final_weights(resumed)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("name", ["SAGE(AdamW)", "AdamW"])
def test_the_callback_takes_any_optimizer_and_logs_sage_statistics_only_with_sage_state(tmp_path, name):
    """A bare ``SAGE(...)`` wrapper (whose ``optimizer`` is the AdamW it wraps, inside accelerate's
    wrapper) gets its statistics; a plain AdamW trains with the callback and gets none."""
    from fairseq_sage import SAGE as SAGEWrapper

    model = tiny_marian()
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-2)
    optimizer = SAGEWrapper(adamw, beta0=0.8) if name == "SAGE(AdamW)" else adamw
    arguments = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=10, per_device_train_batch_size=BATCH, logging_steps=5,
        save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=1,
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=arguments, train_dataset=Sorting(), optimizers=(optimizer, None))
    add_sage_statistics(trainer)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logged] == [5, 10]
    sage_keys = [{key for key in entry if key.startswith("sage_")} for entry in logged]
    if name == "AdamW":
        assert sage_keys == [set(), set()]
    else:
        assert all({"sage_mult_mean", "sage_mult_p10", "sage_mult_p50", "sage_mult_p90"} <= keys for keys in sage_keys)
        for entry in logged:
            assert 0 < entry["sage_mult_p10"] <= entry["sage_mult_p50"] <= entry["sage_mult_p90"]
        assert {int(s["step"]) for s in optimizer.state.values()} == {10}


@pytest.mark.parametrize("wrapped", [False, True], ids=["as given", "in accelerate's wrapper"])
@pytest.mark.parametrize("name", ["SAGE(AdamW)", "AdamW", "AdamSAGE"])
def test_the_callback_given_an_optimizer_directly(name, wrapped):
    """The callback as any caller may use it: statistics where the optimizer holds SAGE state (equal
    to sage_statistics of that state), nothing and no error otherwise."""
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    from fairseq_sage import SAGE as SAGEWrapper
    from fairseq_sage.hf import SAGEStatisticsCallback

    layer = torch.nn.Linear(4, 3)
    sage = {"SAGE(AdamW)": lambda: SAGEWrapper(torch.optim.AdamW(layer.parameters()), beta0=0.8),
            "AdamW": lambda: torch.optim.AdamW(layer.parameters()),
            "AdamSAGE": lambda: AdamSAGE(layer.parameters(), beta0=0.8)}[name]()
    if wrapped:
        Accelerator(cpu=True)  # the process state accelerate's wrapper reads, as the Trainer sets it up
    optimizer = AcceleratedOptimizer(sage, device_placement=False) if wrapped else sage
    for _ in range(2):
        layer(torch.randn(5, 4)).square().sum().backward()
        callback = SAGEStatisticsCallback()
        callback.on_pre_optimizer_step(None, transformers.TrainerState(logging_steps=1), None, optimizer=optimizer)
        if name == "AdamW":
            assert callback.statistics == {}
        else:
            assert callback.statistics == sage_statistics(sage.sage_param_groups, sage.state)
            assert callback.statistics["sage_mult_mean"] > 0
        sage.step()  # accelerate's wrapper steps only where an Accelerator was set up
        sage.zero_grad()
