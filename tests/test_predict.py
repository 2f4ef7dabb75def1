"""The predict mode end to end: sources, the poses CSV, equality with test mode, skipped images, errors."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from conftest import run_main, run_script, tiny_config_dict, write_config
from engine.cli import main as cli_main
from engine.evaluation.evaluate import Evaluator
from engine.evaluation.page import read_embedded_json
from inference_helpers import save_tiny_checkpoint

TEST_CSV = "abs_7scenes_pose.csv_chess_test.csv"


def read_poses(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["img_path"]: r for r in rows}


def pose_of(row) -> np.ndarray:
    return np.array([float(row[c]) for c in ("t1", "t2", "t3", "q1", "q2", "q3", "q4")])


def predict_cmd(script, model, images, config, ckpt, out, *extra):
    return [
        script,
        model,
        "predict",
        "random",
        str(images),
        str(config),
        "--checkpoint_path",
        str(ckpt),
        "--output_path",
        str(out),
        "--quiet",
        *extra,
    ]


def run_predict(cmd, capsys):
    """A predict command through its script's main in this process (test_predict_on_folder_equals_test_mode
    runs the script itself)."""
    script, *args = cmd
    return run_main(cli_main, args, capsys, multi_scene=script == "main_multi_scene.py")


def only_csv(out):
    files = list(out.glob("*_poses.csv"))
    assert len(files) == 1, files
    return files[0]


@pytest.fixture(scope="module")
def single(scene7, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict_single")
    images = sorted(scene7.rglob("*.color.png"))
    ckpt = save_tiny_checkpoint(tmp / "hyperpose_final.pth", "hyperpose", images)
    config = write_config(tmp / "tiny.json", tiny_config_dict())
    return tmp, ckpt, config


@pytest.mark.slow
def test_predict_on_folder_equals_test_mode(scene7, single, tmp_path):
    """Poses of predict on the image folder equal test mode's predictions for the same images to 1e-6."""
    _, ckpt, config = single
    proc = run_script(predict_cmd("main_single_scene.py", "hyperpose", scene7, config, ckpt, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "localized 16 of 16 images" in proc.stdout
    rows = read_poses(only_csv(tmp_path))
    assert len(rows) == 16 and all(name.startswith("chess/seq-0") for name in rows)

    evaluator = Evaluator("hyperpose", "random", scene7, scene7 / TEST_CSV, config, device="cpu", progress=False)
    model, scene_map = evaluator.load(ckpt)
    (dataset,) = evaluator.test_sets(scene_map).values()
    pred, _ = evaluator.predict(model, dataset)
    expected = pred.pose_pred_N7.astype(np.float64)
    expected[:, 3:] /= np.linalg.norm(expected[:, 3:], axis=1, keepdims=True)
    got = np.stack([pose_of(rows[p]) for p in pred.paths])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert np.ptp(got[:, 0]) > 1e-4  # the images are told apart, so a row mix-up would show
    np.testing.assert_allclose(np.linalg.norm(got[:, 3:], axis=1), 1.0, atol=1e-6)


def test_sources_glob_list_and_label_csv_agree(scene7, single, tmp_path, capsys):
    _, ckpt, config = single
    by_source = {}
    listing = tmp_path / "lists" / "images.txt"
    listing.parent.mkdir()
    test_images = [r.split(",")[3] for r in (scene7 / TEST_CSV).read_text().splitlines()[1:]]
    listing.write_text("# test frames\n\n" + "\n".join(test_images) + "\n")
    sources = {
        "glob": (f"{scene7}/chess/seq-04/*.png", ()),
        "list": (listing, ("--dataset_path", str(scene7))),
        "labels": (scene7 / TEST_CSV, ()),
    }
    for kind, (source, extra) in sources.items():
        out = tmp_path / kind
        proc = run_predict(predict_cmd("main_single_scene.py", "hyperpose", source, config, ckpt, out, *extra), capsys)
        assert proc.returncode == 0, proc.stderr
        rows = read_poses(only_csv(out))
        by_source[kind] = {name.split("chess/")[-1]: pose_of(row) for name, row in rows.items()}
    assert set(by_source["labels"]) == {p.split("chess/")[-1] for p in test_images}
    for kind in ("glob", "list"):
        assert by_source[kind].keys() == by_source["labels"].keys()
        for name, pose in by_source[kind].items():
            np.testing.assert_array_equal(pose, by_source["labels"][name])


def test_unreadable_images_are_skipped_and_counted(scene7, single, tmp_path, capsys):
    _, ckpt, config = single
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("frame-000000.color.png", "frame-000001.color.png"):
        shutil.copy(scene7 / "chess" / "seq-04" / name, folder / name)
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not listed: no image extension")
    proc = run_predict(
        predict_cmd("main_single_scene.py", "hyperpose", folder, config, ckpt, tmp_path / "out", "--html"), capsys
    )
    assert proc.returncode == 0, proc.stderr
    assert "localized 2 of 3 images; skipped 1 unreadable" in proc.stdout
    assert "broken.png" in proc.stderr
    rows = read_poses(only_csv(tmp_path / "out"))
    assert sorted(rows) == ["frame-000000.color.png", "frame-000001.color.png"]
    page = next((tmp_path / "out").glob("*_poses.html")).read_text()
    (trace,) = read_embedded_json(page, "fig-positions")["data"]
    np.testing.assert_allclose(trace["x"], [float(rows[n]["t1"]) for n in sorted(rows)], atol=1e-5)


def test_multi_scene_predict_equals_test_mode(scenes3, tmp_path, capsys):
    labels = scenes3 / "7scenes_all_scenes.csv"
    scenes = sorted({line.split(",")[0] for line in labels.read_text().splitlines()[1:]})
    images = sorted(scenes3.rglob("*.color.png"))
    ckpt = save_tiny_checkpoint(tmp_path / "mshyperpose_final.pth", "mshyperpose", images, scenes)
    config = write_config(tmp_path / "tiny.json", tiny_config_dict())
    proc = run_predict(
        predict_cmd("main_multi_scene.py", "mshyperpose", labels, config, ckpt, tmp_path / "out"), capsys
    )
    assert proc.returncode == 0, proc.stderr
    rows = read_poses(only_csv(tmp_path / "out"))
    assert set(next(iter(rows.values()))) >= {"scene_pred", "scene_prob"}

    evaluator = Evaluator("mshyperpose", "random", scenes3, labels, config, device="cpu", progress=False)
    model, scene_map = evaluator.load(ckpt)
    (dataset,) = evaluator.test_sets(scene_map).values()
    pred, _ = evaluator.predict(model, dataset)
    expected = pred.pose_pred_N7.astype(np.float64)
    expected[:, 3:] /= np.linalg.norm(expected[:, 3:], axis=1, keepdims=True)
    np.testing.assert_allclose(np.stack([pose_of(rows[p]) for p in pred.paths]), expected, rtol=0, atol=1e-6)
    assert [rows[p]["scene_pred"] for p in pred.paths] == [pred.id_to_scene[int(i)] for i in pred.scene_pred_N]
    assert all(0 < float(r["scene_prob"]) <= 1 for r in rows.values())


@pytest.mark.parametrize("case", ["empty_folder", "none_readable", "wrong_model", "missing_source"])
def test_predict_errors_are_one_line(case, single, tmp_path, capsys):
    from test_cli import assert_one_line_error

    _, ckpt, config = single
    model, source = "hyperpose", tmp_path / "imgs"
    source.mkdir()
    if case == "empty_folder":
        (source / "readme.txt").write_text("no images here")
        pattern = r"no images in folder"
    elif case == "none_readable":
        (source / "a.png").write_bytes(b"broken")
        pattern = r"none of the 1 images could be read"
    elif case == "wrong_model":
        (source / "a.png").write_bytes(b"broken")
        model, pattern = "effposenet", r"holds a 'hyperpose' model, not 'effposenet'"
    else:
        source, pattern = tmp_path / "nowhere", r"images not found: .*nowhere"
    proc = run_predict(predict_cmd("main_single_scene.py", model, source, config, ckpt, tmp_path / "out"), capsys)
    assert_one_line_error(proc, pattern)
    assert not (tmp_path / "out").exists()


def test_reference_multi_scene_state_dict_takes_scene_names_from_a_label_csv(scenes3, tmp_path, capsys):
    """A bare state_dict has no scene map: with a label CSV as the source its sorted scenes name the ids."""
    import torch

    labels = scenes3 / "7scenes_all_scenes.csv"
    scenes = sorted({line.split(",")[0] for line in labels.read_text().splitlines()[1:]})
    ckpt = save_tiny_checkpoint(tmp_path / "ours.pth", "ems-transposenet", sorted(scenes3.rglob("*.color.png")), scenes)
    bare = tmp_path / "reference.pth"
    torch.save(torch.load(ckpt, weights_only=True)["model"], bare)
    config = write_config(tmp_path / "tiny.json", tiny_config_dict())
    proc = run_predict(
        predict_cmd("main_multi_scene.py", "ems-transposenet", labels, config, bare, tmp_path / "out"), capsys
    )
    assert proc.returncode == 0, proc.stderr
    assert "using 8 attention heads" in proc.stderr  # the reference's quirk, as in test mode
    rows = read_poses(only_csv(tmp_path / "out"))
    assert {r["scene_pred"] for r in rows.values()} <= set(scenes)


def test_predict_refuses_batch_size_zero_and_a_read_only_output_before_any_work(single, read_only_dir, tmp_path):
    from engine.deployment.predict import predict
    from util.errors import UserError

    _, ckpt, config = single
    with pytest.raises(UserError, match=r"--batch_size must be >= 1, got 0"):
        predict("hyperpose", str(tmp_path / "no_images"), config, ckpt, tmp_path / "out", batch_size=0)
    # The output folder is checked first: the missing image source would only be found after it.
    with pytest.raises(UserError, match="--output_path .*(not writable|cannot create the folder)"):
        predict("hyperpose", str(tmp_path / "no_images"), config, ckpt, read_only_dir / "out")


def test_an_override_config_after_the_options_is_accepted(scene7, single, tmp_path, capsys):
    """``... config.json --output_path X override.json``: the override may follow the options."""
    _, ckpt, config = single
    override = write_config(tmp_path / "override.json", {"hyperpose": {"batch_size": 3}})
    args = predict_cmd("main_single_scene.py", "hyperpose", scene7, config, ckpt, tmp_path / "out") + [str(override)]
    proc = run_predict(args, capsys)
    assert proc.returncode == 0, proc.stderr
    assert "localized 16 of 16 images" in proc.stdout
