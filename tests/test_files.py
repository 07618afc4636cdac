"""Files written atomically get the permissions a plain open(path, "w") would give them.

``tempfile.mkstemp`` makes its files 0600 whatever the umask, so every file renamed from one
(``checkpoint_last.pt``, averaged checkpoints, every data_prep output, ...) could be read by its
owner only; and replacing a file changed its mode. Each writer is run here under umask 022 and
077 against a control file made with ``open(path, "w")``.
"""

import contextlib
import os
import stat
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from data_prep import textio
from fairseq_sage import files
from fairseq_sage.checkpoints import copy_atomic, save_atomic
from fairseq_sage.tools.analysis.report import write_csv
from fairseq_sage.tools.average_checkpoints import cli_main as average_main


@contextlib.contextmanager
def umask(mask):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def plain_open_mode(folder) -> int:
    """The mode ``open(path, "w")`` gives a new file under the current umask."""
    control = folder / "control"
    with open(control, "w"):
        pass
    try:
        return mode(control)
    finally:
        control.unlink()


def small_checkpoint(path):
    torch.save({"model": {"w": torch.ones(2)}, "cfg": {"model": {"arch": "x"}}}, path)
    return path


WRITERS = {
    "write_atomic": lambda folder, path: files.write_atomic(path, "text\n"),
    "save_atomic (checkpoints)": lambda folder, path: save_atomic({"w": torch.ones(2)}, str(path)),
    "copy_atomic (checkpoint_last.pt)": lambda folder, path: copy_atomic(str(small_checkpoint(folder / "src.pt")), str(path)),
    "data_prep output": lambda folder, path: textio.write_lines(path, ["a", "b"]),
    "analysis table": lambda folder, path: write_csv(path, [{"a": 1}]),
    "averaged checkpoint": lambda folder, path: average_main(
        ["--inputs", str(small_checkpoint(folder / "a.pt")), str(small_checkpoint(folder / "b.pt")), "--output", str(path)]),
}


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["umask-022", "umask-077"])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_new_files_get_a_plain_opens_mode_and_replaced_ones_keep_theirs(writer, mask, tmp_path):
    path = tmp_path / "out"
    with umask(mask):
        expected = plain_open_mode(tmp_path)
        WRITERS[writer](tmp_path, path)
        assert mode(path) == expected == 0o666 & ~mask
        os.chmod(path, 0o640)
        WRITERS[writer](tmp_path, path)
        assert mode(path) == 0o640, "the replaced file's mode is kept"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_fairseqs_copy_onto_checkpoint_last_gets_the_mode_of_checkpoint_best(tmp_path):
    """fairseq writes checkpoint_best.pt with a plain copy and checkpoint_last.pt with ours."""
    script = ("import fairseq_sage.fairseq, shutil, sys\n"  # the plugin, as --user-dir loads it
              "from fairseq.file_io import PathManager\n"
              "PathManager.copy(sys.argv[1], sys.argv[2], overwrite=True)\n"
              "shutil.copyfile(sys.argv[1], sys.argv[3])\n")
    source = small_checkpoint(tmp_path / "checkpoint_1_4.pt")
    with umask(0o027):
        subprocess.run([sys.executable, "-c", script, source, tmp_path / "checkpoint_last.pt",
                        tmp_path / "checkpoint_best.pt"], cwd=REPO, check=True, capture_output=True)
    assert mode(tmp_path / "checkpoint_last.pt") == mode(tmp_path / "checkpoint_best.pt") == 0o640


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["umask-022", "umask-077"])
def test_a_data_prep_command_writes_with_the_umask(mask, tmp_path):
    (tmp_path / "all").write_text("".join(f"{n}\n" for n in range(1, 8)))
    with umask(mask):
        subprocess.run([sys.executable, "-m", "data_prep.split", "--every", "3", tmp_path / "all",
                        tmp_path / "train", tmp_path / "valid"], cwd=REPO, check=True, capture_output=True)
    assert mode(tmp_path / "train") == mode(tmp_path / "valid") == 0o666 & ~mask


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "out"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="stop"):
        with files.replaced_atomically(path) as tmp:
            tmp.write_text("new, half-written")
            raise RuntimeError("stop")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_importing_the_helper_imports_no_torch():
    """data_prep runs it in many short processes: importing torch would cost each a second or more."""
    proc = subprocess.run([sys.executable, "-c", "import sys, fairseq_sage.files, data_prep.textio; "
                           "print('torch' in sys.modules)"], cwd=REPO, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
