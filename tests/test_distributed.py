"""Data-parallel SAGE training across processes with fairseq's distributed training (torch.distributed).

Two CPU processes, launched by torchrun, talk over gloo. fairseq's default ``--ddp-backend
pytorch_ddp`` passes a CUDA device id to DistributedDataParallel, and its torchrun support takes
the rank's GPU from ``torch.cuda.device_count()``, so on CPU the ranks run with ``--ddp-backend
legacy_ddp`` (fairseq's own all-reduce) and get ``--distributed-rank`` from torchrun's ``RANK``.

Run as a script (``python tests/test_distributed.py OUT_DIR FAIRSEQ_TRAIN_ARGS...``, once per
rank under torchrun), this file trains with fairseq-train and then writes that rank's weights and
optimizer state to ``OUT_DIR/rank<RANK>.pt``: fairseq itself saves checkpoints on rank 0 only.
"""

import os
import re
import socket
import subprocess
import sys

import torch

DISTRIBUTED_ON_CPU = [
    "--distributed-world-size", "2", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp",
    "--distributed-init-method", "env://", "--distributed-no-spawn",
]
UPDATES = 5
# the same batches with and without data parallelism: fairseq deals batch 2k to rank 0 and 2k+1
# to rank 1, and one process with --update-freq 2 accumulates batches 2k and 2k+1; no dropout,
# whose masks would depend on which process draws them
COMMON = ["--max-update", str(UPDATES), "--dropout", "0", "--no-epoch-checkpoints"]


def train_one_rank(out_dir: str, fairseq_args: list) -> None:
    """fairseq-train as rank ``$RANK`` of a torchrun job; then save its weights and optimizer state."""
    from fairseq import trainer as trainer_module
    from fairseq_cli import train

    trainers = []
    build_trainer = trainer_module.Trainer.__init__

    def recording_init(self, *args, **kwargs):
        build_trainer(self, *args, **kwargs)
        trainers.append(self)

    trainer_module.Trainer.__init__ = recording_init
    rank = os.environ["RANK"]
    sys.argv = ["fairseq-train", *fairseq_args, "--distributed-rank", rank]
    train.cli_main()
    (trainer,) = trainers
    torch_optimizer = trainer.optimizer.optimizer
    this_ranks_part = getattr(torch_optimizer, "optim", torch_optimizer)  # fairscale's OSS: the shard
    torch.save({"model": trainer.get_model().state_dict(), "optimizer": this_ranks_part.state_dict()},
               os.path.join(out_dir, f"rank{rank}.pt"))


if __name__ == "__main__":
    train_one_rank(sys.argv[1], sys.argv[2:])
    sys.exit(0)


import pytest  # noqa: E402

from conftest import run_fairseq, train_args  # noqa: E402
from forked_cli import python_shim  # noqa: E402
from fairseq_sage.checkpoints import load_checkpoint  # noqa: E402

STATE_KEYS = ("sensitivity_ema", "exp_avg", "exp_avg_sq")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_two_ranks(out_dir, fairseq_args) -> dict:
    """Train on two torchrun ranks (the launcher and the ranks forked: python_shim); return
    ``{rank: saved state, "log": their output}``."""
    out_dir.mkdir()
    command = [str(python_shim()), "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
               __file__, str(out_dir), *map(str, fairseq_args)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    saved = {rank: torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)}
    return dict(saved, log=proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def runs(toy_data_bin, tmp_path_factory):
    """One process with --update-freq 2, and two data-parallel ranks, same total batch."""
    root = tmp_path_factory.mktemp("distributed")
    run_fairseq("train", *train_args(toy_data_bin, root / "single", *COMMON, "--update-freq", "2"))
    ranks = run_two_ranks(root / "dumps", train_args(toy_data_bin, root / "ddp", *COMMON, *DISTRIBUTED_ON_CPU))
    return {
        "single": load_checkpoint(str(root / "single" / "checkpoint_last.pt")),
        "ddp": load_checkpoint(str(root / "ddp" / "checkpoint_last.pt")),
        "ranks": ranks,
        "root": root,
    }


def assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for index in a:
        assert a[index]["step"] == b[index]["step"] == UPDATES
        for key in STATE_KEYS:
            assert torch.equal(a[index][key], b[index][key]), (index, key)


def test_ranks_hold_identical_weights_and_sensitivities(runs):
    rank0, rank1 = runs["ranks"][0], runs["ranks"][1]
    assert rank0["model"].keys() == runs["ddp"]["model"].keys()
    for name, weight in rank0["model"].items():
        assert torch.equal(weight, rank1["model"][name]), name
        assert torch.equal(weight, runs["ddp"]["model"][name]), "rank 0's checkpoint holds its weights"
    assert_states_equal(rank0["optimizer"]["state"], rank1["optimizer"]["state"])
    assert_states_equal(rank0["optimizer"]["state"], runs["ddp"]["last_optimizer_state"]["state"])


def test_two_ranks_match_one_process_with_the_same_total_batch(runs):
    single, ddp = runs["single"], runs["ddp"]
    assert ddp["extra_state"]["train_iterator"]["iterations_in_epoch"] == UPDATES, "one batch per rank per update"
    for name, weight in single["model"].items():
        torch.testing.assert_close(ddp["model"][name], weight, rtol=1e-4, atol=1e-5, msg=name)
    one, two = single["last_optimizer_state"]["state"], ddp["last_optimizer_state"]["state"]
    assert one.keys() == two.keys()
    for key in STATE_KEYS:
        # summing gradients in another order changes the last bits; a gradient that is pure
        # rounding noise (the attention key biases get exactly 0 in exact arithmetic) differs
        # relatively, so the tolerance is relative to the largest value of each state
        scale = max(s[key].abs().max().item() for s in one.values())
        for index in one:
            torch.testing.assert_close(two[index][key], one[index][key], rtol=1e-4, atol=1e-5 * scale,
                                       msg=f"{key} of parameter {index}")
    losses = [float(c["extra_state"]["val_loss"]) for c in (single, ddp)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_zero_sharding_of_optimizer_state_gives_the_unsharded_result(runs, toy_data_bin):
    """--zero-sharding os (fairscale's OSS): each rank keeps Ī for its part of the parameters only."""
    root = runs["root"]
    ranks = run_two_ranks(root / "sharded-dumps", train_args(
        toy_data_bin, root / "sharded", *COMMON, *DISTRIBUTED_ON_CPU, "--zero-sharding", "os"))
    sharded = load_checkpoint(str(root / "sharded" / "checkpoint_last.pt"))
    for name, weight in runs["ddp"]["model"].items():
        assert torch.equal(sharded["model"][name], weight), name
        assert torch.equal(ranks[1]["model"][name], weight), name
    # rank 0 gathers the shards into the checkpoint
    assert_states_equal(sharded["last_optimizer_state"]["state"], runs["ddp"]["last_optimizer_state"]["state"])
    parts = [len(ranks[r]["optimizer"]["state"]) for r in (0, 1)]
    assert all(parts) and sum(parts) == len(sharded["last_optimizer_state"]["state"])
    # the logged SAGE statistics read rank 0's shard of the state: with an empty state they would
    # be those of a first update at every update, whose variation U = |I - Ī_c| is 0 but for rounding
    logged = {key: [float(v) for v in re.findall(rf"sage_{key}_mean=([-+.e\d]+)", ranks["log"])]
              for key in ("variation", "sensitivity")}
    assert len(logged["variation"]) == len(logged["sensitivity"]) == UPDATES, ranks["log"][-3000:]
    ratios = [u / i for u, i in zip(logged["variation"], logged["sensitivity"])]
    assert ratios[0] < 1e-5 and all(ratio > 1e-2 for ratio in ratios[1:]), ratios


def test_sage_over_nag_keeps_the_ranks_identical(toy_data_bin, tmp_path):
    """``--optimizer sage --sage-base nag`` on two data-parallel ranks: same weights, same Ī and
    momentum buffers on both, as for adam_sage."""
    from helpers import sage_train_args

    flags = ("--sage-base", "nag", "--momentum", "0.9", "--lr", "0.05", *COMMON, *DISTRIBUTED_ON_CPU)
    ranks = run_two_ranks(tmp_path / "dumps", sage_train_args(toy_data_bin, tmp_path / "ddp", *flags))
    rank0, rank1 = ranks[0], ranks[1]
    for name, weight in rank0["model"].items():
        assert torch.equal(weight, rank1["model"][name]), name
    state0, state1 = rank0["optimizer"]["state"], rank1["optimizer"]["state"]
    assert state0.keys() == state1.keys() and state0
    for index, entry in state0.items():
        assert entry["sage_step"] == UPDATES
        for key in ("sensitivity_ema", "momentum_buffer"):
            assert torch.equal(entry[key], state1[index][key]), (index, key)
