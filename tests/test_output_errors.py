"""Output-side failures: a full disk, a read-only or invalid output folder. Each is one line, early, and
loses nothing already written."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config_dict, write_config
from engine import cli
from engine.evaluation import batch_eval
from engine.training.train import train
from util.errors import UserError
from util.io import atomic_torch_save, atomic_write_text


def chess_train(root):
    return root / "abs_7scenes_pose.csv_chess_train.csv"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_full_disk_is_one_line_and_keeps_the_old_file(small_disk):
    disk = small_disk(200 * 1024)
    target = disk / "model.pth"
    atomic_torch_save({"w": torch.arange(10.0)}, target)
    with pytest.raises(UserError) as info:
        atomic_torch_save({"w": torch.zeros(100_000)}, target)  # 400 kB on a 200 kB disk
    message = str(info.value)
    assert "\n" not in message and "model.pth" in message and "free in" in message
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.arange(10.0))
    assert [p.name for p in disk.iterdir()] == ["model.pth"]  # the partial file is gone
    with pytest.raises(UserError, match=r"cannot write .*notes\.txt: No space left"):
        atomic_write_text(disk / "notes.txt", "x" * 400_000)


def test_a_full_disk_while_training_is_logged_and_keeps_the_last_checkpoint(small_disk, scene7, tmp_path, capsys):
    cfg = tiny_config_dict(n_epochs=1)
    cfg["effposenet"]["batch_size"] = 16  # one step per epoch
    config = write_config(tmp_path / "cfg.json", cfg)
    size = (
        train("effposenet", "random", scene7, chess_train(scene7), config, tmp_path / "probe", device="cpu")
        .final_checkpoint.stat()
        .st_size
    )
    disk = small_disk(int(size * 1.5) + 512 * 1024)  # room for the first checkpoint, not for the second
    code = cli.main(
        [
            "effposenet",
            "train",
            "random",
            str(scene7),
            str(chess_train(scene7)),
            str(config),
            "--n_epochs",
            "2",
            "--output_path",
            str(disk),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert code == 2
    line = one_error_line(capsys)
    assert "checkpoint-2.pth" in line and "free in" in line, line
    run = next(disk.glob("run_*"))
    assert "run failed: cannot write" in (run / "train.log").read_text()
    first = torch.load(next(run.glob("*_checkpoint-1.pth")), weights_only=True)
    assert first["epoch"] == 1
    assert not list(run.glob(".*.tmp")) and not list(run.glob("*_final.pth"))


@pytest.mark.parametrize("kind", ["file", "read_only"])
@pytest.mark.parametrize("mode", ["train", "test", "batch"])
def test_a_bad_output_path_fails_before_any_work(mode, kind, scene7, tiny_config, read_only_dir, tmp_path, capsys):
    if kind == "file":
        output = tmp_path / "results.txt"
        output.write_text("not a folder")
    else:
        output = read_only_dir
    labels = chess_train(scene7)
    common = ["effposenet", mode if mode != "batch" else "test", "random", str(scene7), str(labels), str(tiny_config)]
    if mode == "train":
        code = cli.main(common + ["--output_path", str(output), "--device", "cpu", "--quiet"])
    elif mode == "test":  # the checkpoint does not exist: the output folder must be checked first
        code = cli.main(
            common
            + [
                "--checkpoint_path",
                str(tmp_path / "missing.pth"),
                "--output_path",
                str(output),
                "--device",
                "cpu",
                "--quiet",
            ]
        )
    else:
        folder = tmp_path / "run"
        folder.mkdir()
        (folder / "run_checkpoint-1.pth").write_bytes(b"not read before the output folder is checked")
        code = batch_eval.main(common + [str(folder), "--output_path", str(output), "--device", "cpu", "--quiet"])
    assert code == 2
    line = one_error_line(capsys)
    expected = "is a file, not a folder" if kind == "file" else "is not writable"
    assert f"--output_path {output}" in line and expected in line, line
    if kind == "read_only":
        assert not list(output.iterdir())


def test_an_output_path_below_a_file(tmp_path):
    from util.io import check_output_dir

    (tmp_path / "a").write_text("")
    with pytest.raises(UserError, match="a part of the path is a file"):
        check_output_dir(tmp_path / "a" / "b")
    assert check_output_dir(tmp_path / "new" / "folder").is_dir()


def test_a_mistyped_resume_path_creates_no_folder(scene7, tiny_config, tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        train(
            "effposenet",
            "random",
            scene7,
            chess_train(scene7),
            tiny_config,
            tmp_path / "out",
            resume=tmp_path / "typo" / "run_checkpoint-1.pth",
            device="cpu",
        )
    assert not (tmp_path / "typo").exists() and not (tmp_path / "out").exists()


def test_a_named_cache_folder_that_cannot_be_written_is_one_line_before_any_run_folder(
    scene7, tiny_config, read_only_dir, tmp_path, capsys
):
    code = cli.main(
        [
            "effposenet",
            "train",
            "random",
            str(scene7),
            str(chess_train(scene7)),
            str(tiny_config),
            "--output_path",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--quiet",
            "--cache",
            str(read_only_dir),
        ]
    )
    assert code == 2
    line = one_error_line(capsys)
    assert f"cannot use the image cache folder {read_only_dir}: it is not writable" in line, line
    assert not list((tmp_path / "out").glob("run_*"))
