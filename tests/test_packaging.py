"""The installed package (not the source folder) works as fairseq's --user-dir."""

import os
import subprocess
import sys

from conftest import REPO, TINY_TRANSFORMER


def test_installed_package_folder_works_as_user_dir(toy_data_bin, tmp_path):
    wheel_dir, site = tmp_path / "wheel", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheel_dir, REPO],
        check=True, capture_output=True,
    )
    (wheel,) = wheel_dir.glob("fairseq_sage-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel],
        check=True, capture_output=True,
    )
    env = dict(os.environ, PYTHONPATH=str(site))
    user_dir = subprocess.run(
        [sys.executable, "-c", "import fairseq_sage, os; print(os.path.dirname(fairseq_sage.__file__))"],
        check=True, capture_output=True, text=True, cwd=tmp_path, env=env,
    ).stdout.strip()
    assert user_dir == str(site / "fairseq_sage")
    # the fused kernel's source ships with the package (built at its first use there: the other tests build
    # and run it from the source folder; built again from here it would add 10-15 s to the suite)
    shipped = site / "fairseq_sage" / "optim" / "csrc" / "fused_cpu.cpp"
    assert shipped.read_bytes() == (REPO / "fairseq_sage" / "optim" / "csrc" / "fused_cpu.cpp").read_bytes()

    proc = subprocess.run(
        [sys.executable, "-m", "fairseq_cli.train", toy_data_bin, "--user-dir", user_dir, *TINY_TRANSFORMER,
         "--optimizer", "adam_sage", "--sage-impl", "foreach", "--lr", "1e-3", "--max-tokens", "400",
         "--max-update", "2", "--cpu", "--save-dir", tmp_path / "checkpoints", "--no-progress-bar"],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "checkpoint_last.pt").is_file()
