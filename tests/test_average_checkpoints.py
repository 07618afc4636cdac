"""Tests of fairseq_sage.tools.average_checkpoints against hand-computed means."""

import subprocess
import sys

import pytest
import torch

from fairseq_sage.tools.average_checkpoints import (
    AveragingError,
    average_checkpoints,
    cli_main,
    select_checkpoints,
    WRITABLE_HINT,
)
from fairseq_sage.checkpoints import load_checkpoint

from conftest import REPO, USER_DIR, run_fairseq
from forked_cli import run_module


def fake_checkpoint(weight, bias, step):
    """A minimal fairseq-like checkpoint with a model, config and optimizer state."""
    return {
        "model": {"layer.weight": weight, "layer.bias": bias, "num_batches": torch.tensor(step)},
        "cfg": {"model": {"arch": f"arch_{step}"}},
        "optimizer_history": [{"num_updates": step}],
        "last_optimizer_state": {"state": {"exp_avg": torch.ones(3)}},
    }


def save(state, path):
    torch.save(state, path)
    return path


def test_average_matches_hand_computed_mean(tmp_path):
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[0.5, -2.0], [7.0, 0.25]])
    c = torch.tensor([[-1.5, 6.0], [2.0, 1.0]])
    paths = [
        save(fake_checkpoint(w, torch.full((2,), float(i)), i), tmp_path / f"c{i}.pt")
        for i, w in enumerate([a, b, c], start=1)
    ]
    averaged = average_checkpoints(paths)

    expected = (a.double() + b.double() + c.double()) / 3
    assert averaged["model"]["layer.weight"].dtype == torch.float32
    assert torch.allclose(averaged["model"]["layer.weight"].double(), expected, atol=1e-7)
    assert averaged["model"]["layer.weight"][0, 0].item() == 0.0
    assert torch.equal(averaged["model"]["layer.bias"], torch.full((2,), 2.0))
    # integer buffers and every non-model entry come from the last checkpoint
    assert averaged["model"]["num_batches"].item() == 3
    assert averaged["cfg"] == {"model": {"arch": "arch_3"}}
    assert averaged["optimizer_history"] == [{"num_updates": 3}]
    assert "last_optimizer_state" not in averaged
    assert list(averaged["model"]) == ["layer.weight", "layer.bias", "num_batches"]


def test_fp16_is_accumulated_in_high_precision(tmp_path):
    # 60000 * 3 overflows float16 (max 65504); the mean must not.
    big = torch.full((4,), 60000.0, dtype=torch.float16)
    ones = torch.ones(2, dtype=torch.float16)
    paths = [
        save(fake_checkpoint(big, ones * i, i), tmp_path / f"c{i}.pt") for i in (1, 2, 6)
    ]
    averaged = average_checkpoints(paths)["model"]
    assert averaged["layer.weight"].dtype == torch.float16
    assert torch.equal(averaged["layer.weight"], big)
    assert averaged["layer.bias"].dtype == torch.float16
    assert torch.equal(averaged["layer.bias"], torch.full((2,), 3.0, dtype=torch.float16))


def test_shared_parameters_stay_one_tensor(tmp_path):
    paths = []
    for i in range(3):
        embedding = torch.full((5, 2), float(i))
        model = {
            "encoder.embed_tokens.weight": embedding,
            "decoder.embed_tokens.weight": embedding,
            "decoder.output_projection.weight": embedding,
            "decoder.bias": torch.full((5,), 10.0 * i),
        }
        paths.append(save({"model": model, "cfg": {}}, tmp_path / f"c{i}.pt"))
    out = tmp_path / "avg.pt"
    assert cli_main(["--inputs", *map(str, paths), "--output", str(out)]) == 0

    params = load_checkpoint(str(out))["model"]
    tied = [
        params[k]
        for k in (
            "encoder.embed_tokens.weight",
            "decoder.embed_tokens.weight",
            "decoder.output_projection.weight",
        )
    ]
    assert torch.equal(tied[0], torch.full((5, 2), 1.0))
    assert len({t.data_ptr() for t in tied}) == 1, "tied embeddings were split apart"
    assert torch.equal(params["decoder.bias"], torch.full((5,), 10.0))


def test_shared_in_last_but_different_elsewhere_is_an_error(tmp_path):
    shared = torch.zeros(3)
    first = save({"model": {"a": torch.zeros(3), "b": torch.ones(3)}}, tmp_path / "first.pt")
    last = save({"model": {"a": shared, "b": shared}}, tmp_path / "last.pt")
    with pytest.raises(AveragingError, match="first.pt: a and b differ"):
        average_checkpoints([first, last])


def touch_checkpoints(directory, names):
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(b"")


def test_select_last_epoch_checkpoints_in_numeric_order(tmp_path):
    epochs = [f"checkpoint{e}.pt" for e in range(1, 13)]
    touch_checkpoints(tmp_path, epochs + ["checkpoint_best.pt", "checkpoint_last.pt"])
    picked = select_checkpoints(tmp_path, 3, by_update=False)
    assert [p.name for p in picked] == ["checkpoint10.pt", "checkpoint11.pt", "checkpoint12.pt"]
    bounded = select_checkpoints(tmp_path, 2, by_update=False, upper_bound=9)
    assert [p.name for p in bounded] == ["checkpoint8.pt", "checkpoint9.pt"]


def test_select_update_checkpoints_by_update_number(tmp_path):
    names = ["checkpoint_1_900.pt", "checkpoint_2_1000.pt", "checkpoint_2_1500.pt", "checkpoint3.pt"]
    touch_checkpoints(tmp_path, names)
    picked = select_checkpoints(tmp_path, 2, by_update=True)
    assert [p.name for p in picked] == ["checkpoint_2_1000.pt", "checkpoint_2_1500.pt"]
    bounded = select_checkpoints(tmp_path, 2, by_update=True, upper_bound=1200)
    assert [p.name for p in bounded] == ["checkpoint_1_900.pt", "checkpoint_2_1000.pt"]


def test_selection_errors(tmp_path):
    touch_checkpoints(tmp_path, ["checkpoint1.pt", "checkpoint2.pt", "checkpoint_last.pt"])
    with pytest.raises(AveragingError, match="asked to average 5 checkpoints but .* only 2"):
        select_checkpoints(tmp_path, 5, by_update=False)
    with pytest.raises(AveragingError, match="no checkpoint_E_U.pt files"):
        select_checkpoints(tmp_path, 1, by_update=True)
    with pytest.raises(AveragingError, match="no checkpointE.pt files with number <= 0"):
        select_checkpoints(tmp_path, 1, by_update=False, upper_bound=0)


def test_mismatched_shapes_give_one_error_line_naming_the_file(tmp_path, capsys):
    good = save(fake_checkpoint(torch.zeros(2, 2), torch.zeros(2), 1), tmp_path / "good.pt")
    bad = save(fake_checkpoint(torch.zeros(3, 2), torch.zeros(2), 2), tmp_path / "bad.pt")
    assert cli_main(["--inputs", str(bad), str(good), "--output", str(tmp_path / "avg.pt")]) == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(error_lines) == 1
    assert "bad.pt: parameter layer.weight has shape (3, 2)" in error_lines[0]
    assert not (tmp_path / "avg.pt").exists()


def test_mismatched_keys_and_missing_checkpoints_are_errors(tmp_path, capsys):
    good = save(fake_checkpoint(torch.zeros(2, 2), torch.zeros(2), 1), tmp_path / "good.pt")
    other = save({"model": {"other.weight": torch.zeros(2)}}, tmp_path / "other.pt")
    assert cli_main(["--inputs", str(other), str(good), "--output", str(tmp_path / "avg.pt")]) == 2
    assert "other.pt: parameter names differ" in capsys.readouterr().err

    assert cli_main(["--inputs", str(tmp_path / "gone.pt"), "--output", str(tmp_path / "a.pt")]) == 2
    assert "gone.pt does not exist" in capsys.readouterr().err


def test_an_output_that_is_a_folder_is_one_error_line(tmp_path, capsys):
    good = save(fake_checkpoint(torch.zeros(2, 2), torch.zeros(2), 1), tmp_path / "good.pt")
    folder = tmp_path / "averaged"
    folder.mkdir()
    assert cli_main(["--inputs", str(good), "--output", str(folder)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"fairseq-sage-average-checkpoints: error: --output {folder} is a directory; "
        "give the path of the file to write")
    assert not any(folder.iterdir())


def test_a_checkpoint_given_twice_is_an_error(tmp_path, capsys):
    """Also under another name (a hard link): it would weigh twice in the mean."""
    first = save(fake_checkpoint(torch.zeros(2, 2), torch.zeros(2), 1), tmp_path / "c1.pt")
    second = save(fake_checkpoint(torch.ones(2, 2), torch.zeros(2), 2), tmp_path / "c2.pt")
    (tmp_path / "again.pt").hardlink_to(first)
    for inputs, alias in (([first, second, first], ""), ([first, second, tmp_path / "again.pt"], f" (also as {first})")):
        assert cli_main(["--inputs", *map(str, inputs), "--output", str(tmp_path / "avg.pt")]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"fairseq-sage-average-checkpoints: error: checkpoint {inputs[2]} is given twice{alias}; "
            "give each checkpoint once")
    assert not (tmp_path / "avg.pt").exists()


def test_cli_module_entry_point(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fairseq_sage.tools.average_checkpoints", "--inputs", str(tmp_path),
         "--num-epoch-checkpoints", "2", "--output", str(tmp_path / "a.pt")],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"fairseq-sage-average-checkpoints: error: no checkpointE.pt files in {tmp_path}"
    )


def test_averaged_fairseq_checkpoint_loads_in_fairseq_generate(toy_data_bin, trained_toy, tmp_path):
    data_bin, save_dir = toy_data_bin, trained_toy
    out = tmp_path / "avg3.pt"
    assert cli_main(["--inputs", str(save_dir), "--num-epoch-checkpoints", "3", "--output", str(out)]) == 0

    last_epochs = sorted(int(path.stem.removeprefix("checkpoint")) for path in save_dir.glob("checkpoint[0-9]*.pt"))[-3:]
    states = [load_checkpoint(str(save_dir / f"checkpoint{e}.pt")) for e in last_epochs]
    averaged = load_checkpoint(str(out))
    key = "decoder.layers.0.fc1.weight"
    expected = sum(s["model"][key].double() for s in states) / 3
    assert torch.allclose(averaged["model"][key].double(), expected, atol=1e-6)
    assert not torch.equal(states[0]["model"][key], states[2]["model"][key])
    assert averaged["cfg"]["model"] == states[2]["cfg"]["model"]
    assert "last_optimizer_state" not in averaged

    generate = run_fairseq(
        "generate", data_bin, "--user-dir", USER_DIR, "--path", out, "--beam", "2",
        "--batch-size", "16", "--cpu",
        # this fairseq build drops a last batch smaller than the multiple (8 by default)
        "--required-batch-size-multiple", "1",
    )  # fmt: skip
    hypotheses = [line for line in generate.stdout.splitlines() if line.startswith("H-")]
    assert len(hypotheses) == 40
    assert "BLEU4 = " in generate.stdout


def test_output_is_written_atomically(tmp_path, monkeypatch, capsys):
    paths = [
        save(fake_checkpoint(torch.zeros(2), torch.zeros(1), i), tmp_path / f"c{i}.pt")
        for i in (1, 2)
    ]
    out = tmp_path / "avg.pt"
    out.write_bytes(b"previous result")

    def failing_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    assert cli_main(["--inputs", *map(str, paths), "--output", str(out)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"fairseq-sage-average-checkpoints: error: --output {out}: cannot write it (disk full); "
        f"{WRITABLE_HINT}")
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avg.pt", "c1.pt", "c2.pt"]


def average_cli(*argv):
    """The real command line: ``python -m fairseq_sage.tools.average_checkpoints ARGV``."""
    return run_module("fairseq_sage.tools.average_checkpoints", *argv, cwd=REPO)


def assert_one_error_line(proc, expected):
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"fairseq-sage-average-checkpoints: error: {expected}"], proc.stderr


def test_an_output_in_an_unwritable_folder_is_one_line_before_any_work(tmp_path, unwritable_folder):
    good = save(fake_checkpoint(torch.zeros(2, 2), torch.zeros(2), 1), tmp_path / "good.pt")
    before = sorted(unwritable_folder.iterdir())
    for output in (unwritable_folder / "avg.pt", unwritable_folder / "new" / "avg.pt"):
        assert_one_error_line(average_cli("--inputs", good, "--output", output), (
            f"--output {output}: cannot create files in {unwritable_folder} (Permission denied); "
            "give a path in a folder you can write to"))
    assert sorted(unwritable_folder.iterdir()) == before


def test_an_output_under_a_file_is_one_line_and_the_file_is_kept(tmp_path):
    good = save(fake_checkpoint(torch.zeros(2, 2), torch.zeros(2), 1), tmp_path / "good.pt")
    blocker = tmp_path / "notes.txt"
    blocker.write_text("kept\n")
    for output in (blocker / "avg.pt", blocker / "sub" / "avg.pt"):
        assert_one_error_line(average_cli("--inputs", good, "--output", output), (
            f"--output {output}: {blocker} is a file, not a folder; give a path in a folder you can write to"))
    assert blocker.read_text() == "kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.pt", "notes.txt"]
