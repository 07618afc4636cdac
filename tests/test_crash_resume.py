"""A fairseq-train run killed with SIGKILL in the middle of an epoch resumes and ends bit-identically.

fairseq's resume is exact for the optimizer (Ī, moments, step counts and the learning-rate
schedule are in the checkpoint); what differs by default is the grouping of sentences into
batches, which fairseq draws with a seed taken from the epoch at which the process started.
``--update-epoch-batch-itr True`` (on the first run and on the resumed one) draws it per epoch.
"""

import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import REPO, train_args
from fairseq_sage.checkpoints import load_checkpoint

UPDATES_PER_EPOCH = 11  # the reversal corpus of conftest.py in batches of --max-tokens 400
RUN = ["--max-update", "16", "--save-interval-updates", "4", "--update-epoch-batch-itr", "True"]
KILL_AFTER_UPDATE = 6  # checkpoint_1_4.pt is written; the next one comes at update 8


def fairseq_train(*args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    return subprocess.Popen([sys.executable, "-m", "fairseq_cli.train", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def train(*args) -> str:
    proc = fairseq_train(*args)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-5000:]
    return output


def train_until_killed(*args) -> str:
    """Start fairseq-train and SIGKILL it once it logs update KILL_AFTER_UPDATE."""
    proc = fairseq_train(*args)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if f"num_updates={KILL_AFTER_UPDATE}," in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.stdout.close()
    assert proc.wait(timeout=60) == -signal.SIGKILL, "".join(lines)[-5000:]
    return "".join(lines)


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    optimizer_a, optimizer_b = a["last_optimizer_state"], b["last_optimizer_state"]
    assert optimizer_a["state"].keys() == optimizer_b["state"].keys()
    for index, state in optimizer_a["state"].items():
        assert state.keys() == optimizer_b["state"][index].keys()
        for key, value in state.items():
            same = torch.equal(value, optimizer_b["state"][index][key]) if torch.is_tensor(value) else (
                value == optimizer_b["state"][index][key])
            assert same, (index, key)
    history_a, history_b = a["optimizer_history"][-1], b["optimizer_history"][-1]
    assert history_a["num_updates"] == history_b["num_updates"]
    assert history_a["lr_scheduler_state"] == history_b["lr_scheduler_state"]


@pytest.fixture(scope="module")
def straight(toy_data_bin, tmp_path_factory):
    """The save folder of an uninterrupted run."""
    save_dir = tmp_path_factory.mktemp("straight")
    train(*train_args(toy_data_bin, save_dir, *RUN))
    return save_dir


def test_sigkill_mid_epoch_then_resume_ends_bit_identically(toy_data_bin, straight, tmp_path):
    killed = tmp_path / "killed"
    train_until_killed(*train_args(toy_data_bin, killed, *RUN))

    # every checkpoint left behind is whole; at most a temporary file is half-written
    checkpoints = sorted(killed.glob("*.pt"))
    assert {p.name for p in checkpoints} >= {"checkpoint_1_4.pt", "checkpoint_last.pt"}
    for path in checkpoints:
        load_checkpoint(str(path))
    assert all(p.suffix in (".pt", ".tmp") for p in killed.iterdir())
    last = load_checkpoint(str(killed / "checkpoint_last.pt"))
    iterator = last["extra_state"]["train_iterator"]
    assert iterator["epoch"] == 1 and 0 < iterator["iterations_in_epoch"] < UPDATES_PER_EPOCH, "mid-epoch"

    resumed_log = train(*train_args(toy_data_bin, killed, *RUN))
    updates = last["optimizer_history"][-1]["num_updates"]
    assert f"Loaded checkpoint {killed / 'checkpoint_last.pt'} (epoch 1 @ {updates} updates)" in resumed_log
    final = load_checkpoint(str(killed / "checkpoint_last.pt"))
    assert final["optimizer_history"][-1]["num_updates"] == 16
    assert_same_training_state(final, load_checkpoint(str(straight / "checkpoint_last.pt")))


COPY_UNDER_A_SIZE_LIMIT = """
import resource, signal, sys
source, destination, limit, on_limit, hardened = sys.argv[1:]
import fairseq
if hardened == "yes":
    import fairseq_sage  # what --user-dir does, fairseq already imported: loads the plugin
from fairseq.file_io import PathManager
# Python ignores SIGXFSZ, so that a write past the limit fails like a write to a full disk
if on_limit == "killed":
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # the kernel kills the process instead
resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
PathManager.copy(source, destination, overwrite=True)  # how fairseq writes checkpoint_last.pt
"""


@pytest.mark.parametrize("on_limit", ["killed", "disk-full"])
@pytest.mark.parametrize("hardened", ["yes", "no"], ids=["with-fairseq-sage", "fairseq-alone"])
def test_interrupted_copy_onto_checkpoint_last(straight, tmp_path, on_limit, hardened):
    """fairseq saves a new checkpoint, then copies it onto checkpoint_last.pt; here that copy stops
    half-way, the process killed (SIGXFSZ) or its disk full (EFBIG), made deterministic by a
    file-size limit. fairseq alone leaves a truncated checkpoint_last.pt, from which the next run
    cannot resume; with fairseq-sage loaded the previous checkpoint_last.pt stays whole."""
    last = tmp_path / "checkpoint_last.pt"
    previous = (straight / "checkpoint_1_4.pt").read_bytes()
    last.write_bytes(previous)
    newer = straight / "checkpoint_1_8.pt"
    limit = newer.stat().st_size // 2
    proc = subprocess.run([sys.executable, "-c", COPY_UNDER_A_SIZE_LIMIT, newer, last, str(limit), on_limit,
                           hardened], cwd=REPO, capture_output=True, text=True, timeout=300)
    if on_limit == "killed":
        assert proc.returncode == -signal.SIGXFSZ, proc.stderr
    else:
        assert proc.returncode == 1 and "File too large" in proc.stderr, proc.stderr
    if hardened == "yes":
        assert last.read_bytes() == previous
        load_checkpoint(str(last))
        leftovers = [p.name for p in tmp_path.iterdir() if p != last]
        assert len(leftovers) == (1 if on_limit == "killed" else 0)  # a killed process cannot clean up
        assert all(name.startswith(".checkpoint_last.pt.") and name.endswith(".tmp") for name in leftovers)
    else:
        assert last.stat().st_size == limit


def test_resume_from_a_truncated_checkpoint_last_stops_with_one_line(toy_data_bin, straight, tmp_path):
    last = tmp_path / "checkpoint_last.pt"
    last.write_bytes((straight / "checkpoint_1_8.pt").read_bytes()[:100_000])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    proc = fairseq_train(*train_args(toy_data_bin, tmp_path, *RUN))
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1
    assert output.strip().splitlines()[-1] == (
        f"fairseq-sage: error: {last}: not a readable checkpoint, truncated or corrupted? (File is not a zip file); "
        "use an intact copy (an earlier checkpoint_*.pt of the run, say)")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before, "nothing is written or overwritten"
