"""Odd but possible command lines get one line that names the real cause: null groups, links, locales."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env, train_in_process


@pytest.mark.parametrize(
    ("argument", "says"),
    [
        ("callbacks=null", "callbacks is a config group and needs one of its options (default); to turn one entry"),
        ("logger=null", "logger is a config group and needs one of its options (tensorboard)"),
    ],
)
def test_a_config_group_set_to_null_is_one_line(monkeypatch, tmp_path: Path, capsys, argument: str, says: str) -> None:
    assert train_in_process(monkeypatch, tmp_path, argument) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {argument}: ") and says in error and "\n" not in error, error
    assert list(tmp_path.iterdir()) == []


def test_a_dangling_link_as_the_run_folder_is_named_as_a_link(monkeypatch, tmp_path: Path, capsys) -> None:
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "missing" / "folder")
    assert train_in_process(monkeypatch, tmp_path, f"hydra.run.dir={link}") == 2
    error = capsys.readouterr().err
    assert f"symbolic link to {tmp_path / 'missing' / 'folder'}, which does not exist" in error, error
    assert "free some space" not in error and sorted(os.listdir(tmp_path)) == ["run"]


def test_a_folder_that_cannot_be_made_is_not_told_to_free_space(monkeypatch, tmp_path: Path, capsys) -> None:
    assert train_in_process(monkeypatch, tmp_path, "hydra.run.dir=/proc/lenet-run") == 2
    error = capsys.readouterr().err
    assert "make it writable or choose another folder" in error and "free some space" not in error, error


@pytest.mark.slow
def test_a_non_ascii_run_folder_under_an_ascii_locale_is_refused_in_one_line(tiny_data_dir: Path, tmp_path) -> None:
    env = {**cli_env(tiny_data_dir), "LANG": "C", "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    folder = os.fsencode(tmp_path) + "/lauf-ü".encode()
    result = subprocess.run(
        [os.fsencode(sys.executable), b"-m", b"lenet_lightning.train", b"epochs=1", b"hydra.run.dir=" + folder],
        env=env,
        capture_output=True,
        cwd=tmp_path,
        timeout=120,
    )
    stderr = result.stderr.decode("utf-8", "replace").strip()
    assert result.returncode == 2 and "\n" not in stderr and "LANG=C.UTF-8" in stderr, stderr
    assert not os.path.exists(folder)
