"""Hostile input: non-finite gradients, damaged and malicious checkpoints, broken downloads, full disks."""

import argparse
import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import zipfile

import pytest
import torch

from conftest import REPO, USER_DIR, train_args
from forked_cli import run_module
from helpers import torch_default_environment
from data_prep import download
from data_prep.cli import DataPrepError
from fairseq_sage import AdamaxSAGE, AdamSAGE, LionSAGE, SGDSAGE
from fairseq_sage.checkpoints import CheckpointError, load_checkpoint

OPTIMIZERS = {
    "adam": lambda params: AdamSAGE(params, lr=1e-2, weight_decay=0.01),
    "adamax": lambda params: AdamaxSAGE(params, lr=1e-2),
    "sgd": lambda params: SGDSAGE(params, lr=0.1, momentum=0.9),
    "lion": lambda params: LionSAGE(params, lr=1e-3, weight_decay=0.1),
}


def run(command, env_update=None) -> subprocess.CompletedProcess:
    """Run ``command`` from the repository root, in this environment (torch's own default for
    ``torch.load``, unless ``env_update`` says otherwise)."""
    return subprocess.run([str(c) for c in command], cwd=REPO, env=torch_default_environment(env_update),
                          capture_output=True, text=True, timeout=600)


def fairseq(tool, *args, env_update=None) -> subprocess.CompletedProcess:
    return run_module(f"fairseq_cli.{tool}", *args, env=torch_default_environment(env_update), cwd=REPO, timeout=600)


# --- gradients ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_a_non_finite_gradient_skips_the_update(kind, bad_value):
    torch.manual_seed(0)
    inits = [torch.randn(5, 3), torch.randn(4)]
    grads = [[torch.randn_like(x) for x in inits] for _ in range(4)]
    bad = [g.clone() for g in grads[2]]
    bad[1][2] = bad_value

    def train(gradient_sequence):
        params = [torch.nn.Parameter(x.clone()) for x in inits]
        optimizer = OPTIMIZERS[kind](params)
        for step_grads in gradient_sequence:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            optimizer.step()
        return params, optimizer

    params, optimizer = train(grads[:2])
    before = {"weights": [p.detach().clone() for p in params],
              "state": [{k: v.clone() if torch.is_tensor(v) else v for k, v in optimizer.state[p].items()}
                        for p in params]}
    with pytest.warns(RuntimeWarning, match="a gradient holds NaN or inf; update skipped"):
        for p, g in zip(params, bad):
            p.grad = g
        optimizer.step()
    for p, weights, state in zip(params, before["weights"], before["state"]):
        assert torch.equal(p.detach(), weights)
        assert state.keys() == optimizer.state[p].keys() and state["step"] == optimizer.state[p]["step"] == 2
        for key, value in state.items():
            if torch.is_tensor(value):
                assert torch.equal(optimizer.state[p][key], value), key
    # the bad batch left no trace: training goes on as if it had never come
    for p, g in zip(params, grads[3]):
        p.grad = g.clone()
    optimizer.step()
    control, _ = train([grads[0], grads[1], grads[3]])
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(params, control))


NAN_CRITERION_PLUGIN = '''
"""fairseq-sage plus a criterion whose loss turns NaN at the third training batch."""
import fairseq_sage  # noqa: F401  (registers adam_sage)
from fairseq.criterions import register_criterion
from fairseq.criterions.cross_entropy import CrossEntropyCriterion, CrossEntropyCriterionConfig


@register_criterion("cross_entropy_nan_at_third_batch", dataclass=CrossEntropyCriterionConfig)
class CrossEntropyNaNAtThirdBatch(CrossEntropyCriterion):
    training_batches = 0

    def forward(self, model, sample, reduce=True):
        loss, sample_size, logging_output = super().forward(model, sample, reduce)
        if model.training:
            type(self).training_batches += 1
            if type(self).training_batches == 3:
                loss = loss * float("nan")
        return loss, sample_size, logging_output
'''


def test_fairseq_stops_at_a_nan_gradient_before_the_optimizer_sees_it(toy_data_bin, tmp_path):
    """fp32 training: fairseq raises FloatingPointError and saves crash.pt; Ī and weights in it are
    those after update 2, as in checkpoint_1_2.pt."""
    plugin = tmp_path / "nan_at_third_batch"
    plugin.mkdir()
    (plugin / "__init__.py").write_text(NAN_CRITERION_PLUGIN)
    args = [a if a != USER_DIR else plugin for a in train_args(
        toy_data_bin, tmp_path / "save", "--criterion", "cross_entropy_nan_at_third_batch",
        "--save-interval-updates", "2", "--max-update", "6")]
    proc = fairseq("train", *args, env_update={"PYTHONPATH": str(REPO)})
    assert proc.returncode != 0
    assert "FloatingPointError: gradients are Nan/Inf" in proc.stderr
    crash = load_checkpoint(str(tmp_path / "save" / "crash.pt"))
    at_update_2 = load_checkpoint(str(tmp_path / "save" / "checkpoint_1_2.pt"))
    for name, weight in at_update_2["model"].items():
        assert torch.equal(crash["model"][name], weight), name
    states = crash["last_optimizer_state"]["state"]
    assert states.keys() == at_update_2["last_optimizer_state"]["state"].keys()
    for index, state in states.items():
        assert state["step"] == 2
        assert torch.isfinite(state["sensitivity_ema"]).all()
        assert torch.equal(state["sensitivity_ema"], at_update_2["last_optimizer_state"]["state"][index]["sensitivity_ema"])


# --- damaged checkpoints ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_checkpoint(trained_toy):
    return trained_toy / "checkpoint_last.pt"


def flip_byte_of_member(path, member_prefix: str) -> str:
    """Invert one byte in the middle of the largest zip member whose name starts with ``member_prefix``."""
    with zipfile.ZipFile(path) as archive:
        member = max((i for i in archive.infolist() if i.filename.startswith(member_prefix)),
                     key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_length, extra_length = (int.from_bytes(data[member.header_offset + o:member.header_offset + o + 2], "little")
                                 for o in (26, 28))
    position = member.header_offset + 30 + name_length + extra_length + member.file_size // 2
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))
    return member.filename


DAMAGES = {
    "empty": (lambda path: path.write_bytes(b""), r"not a readable checkpoint, truncated or corrupted\? \(EOFError"),
    "truncated": (lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
                  r"not a readable checkpoint, truncated or corrupted\? \(File is not a zip file\)"),
    "a tensor's byte flipped": (lambda path: flip_byte_of_member(path, "archive/data/"),
                                r"corrupted, archive/data/\d+ fails its CRC-32 check"),
    "a pickle byte flipped": (lambda path: flip_byte_of_member(path, "archive/data.pkl"),
                              r"corrupted, archive/data.pkl fails its CRC-32 check"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_checkpoint_is_reported_with_its_name(trained_checkpoint, tmp_path, damage):
    damage_file, message = DAMAGES[damage]
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(trained_checkpoint.read_bytes())
    damage_file(path)
    damaged = path.read_bytes()
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))}: {message}"):
        load_checkpoint(str(path))
    assert path.read_bytes() == damaged


def test_fairseq_generate_stops_on_a_corrupted_checkpoint(toy_data_bin, trained_checkpoint, tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(trained_checkpoint.read_bytes())
    member = flip_byte_of_member(path, "archive/data/")
    proc = fairseq("generate", toy_data_bin, "--user-dir", USER_DIR, "--path", path, "--cpu",
                   "--gen-subset", "valid", "--beam", "2")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"fairseq-sage: error: {path}: corrupted, {member} fails its CRC-32 check; "
        "use an intact copy (an earlier checkpoint_*.pt of the run, say)")
    assert not re.search(r"^H-", proc.stdout, re.MULTILINE), "no translation from a corrupted model"


# --- malicious checkpoints ----------------------------------------------------------------------------


class Payload:
    """Unpickling this object calls ``os.system`` (pickle's __reduce__), which creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_loading_keeps_what_was_allow_listed_before(trained_checkpoint):
    """torch's safe_globals context drops its classes on exit even where they were allow-listed
    before; load_checkpoint must not, or the plugin's allow-list for fairseq's loader is lost and
    the next fairseq-generate load is refused."""
    before = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        load_checkpoint(str(trained_checkpoint))
        assert argparse.Namespace in torch.serialization.get_safe_globals()
        torch.load(trained_checkpoint, map_location="cpu", weights_only=True)  # as fairseq's loader does
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


@pytest.fixture(params=["zip", "legacy"])
def malicious_checkpoint(request, trained_checkpoint, tmp_path):
    """A real checkpoint with a payload in its ``cfg``, in torch's zip format or its pre-1.6 one."""
    state = load_checkpoint(str(trained_checkpoint))
    marker = tmp_path / "payload-ran"
    state["cfg"] = Payload(marker)
    path = tmp_path / "evil.pt"
    torch.save(state, path, _use_new_zipfile_serialization=request.param == "zip")
    assert not marker.exists()
    return path, marker


def test_the_malicious_checkpoint_is_malicious(malicious_checkpoint):
    path, marker = malicious_checkpoint
    run([sys.executable, "-c", f"import torch; torch.load({str(path)!r}, weights_only=False)"])
    assert marker.exists(), "an unrestricted load runs the payload"


def test_load_checkpoint_refuses_a_malicious_pickle(malicious_checkpoint, monkeypatch):
    path, marker = malicious_checkpoint
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # no effect on our explicit weights_only
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: refused to load") + r".*posix.system"):
        load_checkpoint(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("force_unsafe_default", [False, True], ids=["torch-default", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"])
def test_fairseq_generate_refuses_a_malicious_checkpoint(toy_data_bin, malicious_checkpoint, force_unsafe_default):
    path, marker = malicious_checkpoint
    proc = fairseq("generate", toy_data_bin, "--user-dir", USER_DIR, "--path", path, "--cpu", "--gen-subset", "valid",
                   env_update={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"} if force_unsafe_default else None)
    assert proc.returncode == 1
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"fairseq-sage: error: {path}: refused to load") and "posix.system" in last_line
    assert not marker.exists()


def test_a_checkpoint_replaced_after_its_check_is_still_refused(trained_checkpoint, malicious_checkpoint, tmp_path,
                                                              monkeypatch):
    """The plugin checks a checkpoint, then fairseq's loader reads the file again: a file replaced in
    between (by whoever can write there) is unpickled with torch's allow-list too, even where
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD asks for an unrestricted load."""
    from fairseq import checkpoint_utils
    from fairseq_sage.fairseq import checkpoint_hardening

    checkpoint_hardening.install_hardening()
    evil, marker = malicious_checkpoint
    path = tmp_path / "checkpoint_last.pt"
    path.write_bytes(trained_checkpoint.read_bytes())
    check, checked = checkpoint_hardening.check_checkpoint, []

    def check_then_replace(name):
        check(name)  # the real check passes: the file is still the trained checkpoint
        checked.append(name)
        os.replace(evil, name)

    monkeypatch.setattr(checkpoint_hardening, "check_checkpoint", check_then_replace)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(SystemExit, match=re.escape(f"fairseq-sage: error: {path}: refused to load") + ".*posix.system"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert len(checked) == 1 and not marker.exists()


def test_fairseq_train_refuses_to_resume_from_a_malicious_checkpoint(toy_data_bin, malicious_checkpoint, tmp_path):
    path, marker = malicious_checkpoint
    proc = fairseq("train", *train_args(toy_data_bin, tmp_path / "save", "--restore-file", path, "--max-update", "3"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"fairseq-sage: error: {path}: refused to load")
    assert not marker.exists()
    assert not (tmp_path / "save" / "checkpoint_last.pt").exists()


# --- recipes: downloads and full disks ---------------------------------------------------------------


class FlakyServer:
    """HTTP server for one file whose first response stops half-way, though it announced the whole length."""

    def __init__(self, content: bytes):
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.headers.get("Range"))
                start = int(re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "bytes=0-").group(1))
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
                self.send_header("Content-Length", str(len(content) - start))
                self.end_headers()
                if len(server.requests) == 1:  # the connection drops
                    self.wfile.write(content[start: len(content) // 3])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                else:
                    self.wfile.write(content[start:])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_truncated_download_is_detected_and_resumed(tmp_path):
    """The recipes fetch WMT and IWSLT archives without a checksum unless one is given."""
    content = bytes(range(256)) * 300
    server = FlakyServer(content)
    dest = tmp_path / "corpus.tgz"
    try:
        with pytest.raises(DataPrepError, match=f"download interrupted after {len(content) // 3} of {len(content)} "
                                                "bytes; run again to resume"):
            download.fetch(server.url, dest)
        assert not dest.exists()
        download.fetch(server.url, dest)
    finally:
        server.close()
    assert dest.read_bytes() == content
    assert server.requests == [None, f"bytes={len(content) // 3}-"]


TOKENIZE_UNDER_A_SIZE_LIMIT = """
import resource, runpy, signal, sys
limit, on_limit, *argv = sys.argv[1:]
if on_limit == "killed":
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it: a write past the limit fails instead
resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
sys.argv = ["data_prep.moses", *argv]
runpy.run_module("data_prep.moses", run_name="__main__")
"""


@pytest.mark.parametrize("on_limit", ["disk-full", "killed"])
def test_a_full_disk_or_a_kill_leaves_no_half_written_output(tmp_path, on_limit):
    """A data_prep step (Moses tokenisation here) whose writes hit a file-size limit."""
    source = tmp_path / "train.en"
    source.write_text("".join(f"Sentence number {i}, with some words.\n" for i in range(20000)))
    output = tmp_path / "train.tok.en"
    output.write_text("output of an earlier, finished run\n")
    proc = run([sys.executable, "-c", TOKENIZE_UNDER_A_SIZE_LIMIT, 100_000, on_limit,
                "tokenize", "--lang", "en", source, output], {"PYTHONDONTWRITEBYTECODE": "1"})
    if on_limit == "killed":
        assert proc.returncode == -signal.SIGXFSZ, proc.stderr
    else:
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.strip() == f"error: {output}: File too large; free some disk space and run again"
    assert output.read_text() == "output of an earlier, finished run\n"
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p not in (source, output))
    assert len(leftovers) == (1 if on_limit == "killed" else 0)  # only a killed process cannot clean up
    assert all(name.startswith(".train.tok.en.") and name.endswith(".tmp") for name in leftovers)
