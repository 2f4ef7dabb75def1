"""The entry scripts end to end, as users type them, and their one-line errors."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from conftest import REPO, run_main, run_script, tiny_config_dict, write_config
from engine.cli import main as cli_main

CAMBRIDGE = "./datasets/CambridgeLandmarks"
SHOP_TRAIN = f"{CAMBRIDGE}/abs_cambridge_pose_sorted.csv_ShopFacade_train.csv"
SHOP_TEST = f"{CAMBRIDGE}/abs_cambridge_pose_sorted.csv_ShopFacade_test.csv"
BACKBONE = "./models/backbones/efficient-net-b0.pth"


def assert_one_line_error(proc, pattern: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(pattern, lines[0]), lines[0]


def cli(args, capsys, cwd=None, multi_scene=False):
    """``main_single_scene.py`` (``main_multi_scene.py`` with ``multi_scene``) in this process, as from ``cwd``:
    the scripts themselves run as subprocesses in the seed-command tests."""
    return run_main(cli_main, args, capsys, cwd=cwd, multi_scene=multi_scene)


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """A working folder laid out as the seed commands expect: Cambridge-style synthetic data under
    ./datasets/CambridgeLandmarks, a backbone state_dict file and ./configs/CambridgeLandmarks_config.json
    (the shipped file, shrunk to 2 epochs of small images so the test is quick)."""
    from datasets.synthetic import generate
    from models.backbone import main as backbone_main

    cwd = tmp_path_factory.mktemp("user")
    generate(
        cwd / CAMBRIDGE, scenes=1, layout="cambridge", frames_per_seq=4, size=(64, 48), seed=3, names=["ShopFacade"]
    )
    backbone_main(["write", str(cwd / BACKBONE)])  # as ``python -m models.backbone write`` (test_backbone runs it)
    cfg = json.loads((REPO / "configs" / "CambridgeLandmarks_config.json").read_text())
    tiny = tiny_config_dict()
    cfg["general"].update(tiny["general"])
    for name in ("hyperpose", "effposenet"):
        cfg[name].update(
            n_epochs=2,
            batch_size=4,
            image_resize=56,
            image_crop=48,
            **{k: tiny["hyperpose"][k] for k in ("hyper_dim_t", "hyper_dim_rot") if name == "hyperpose"},
        )
    write_config(cwd / "configs" / "CambridgeLandmarks_config.json", cfg)
    return cwd


@pytest.fixture(scope="module")
def trained_proc(user_dir):
    """The training seed command, run as a user would: a subprocess whose stderr is a pipe (as under nohup or
    CI), with no TQDM_DISABLE."""
    proc = run_script(
        [
            "main_single_scene.py",
            "hyperpose",
            "train",
            BACKBONE,
            CAMBRIDGE,
            SHOP_TRAIN,
            "./configs/CambridgeLandmarks_config.json",
            "--output_path",
            "./models",
        ],
        cwd=user_dir,
        env={"TQDM_DISABLE": None},
    )
    assert proc.returncode == 0, proc.stderr
    runs = sorted((user_dir / "models").glob("run_*"))
    assert len(runs) == 1
    return proc, runs[0]


@pytest.fixture(scope="module")
def trained(trained_proc):
    return trained_proc[1]


@pytest.fixture(scope="module")
def hyperpose_ckpt(user_dir):
    """A hyperpose checkpoint in our format without a training run, for the error checks."""
    from inference_helpers import save_tiny_checkpoint

    return save_tiny_checkpoint(user_dir / "tiny" / "hyperpose_final.pth", "hyperpose", scenes=["ShopFacade"])


@pytest.mark.slow
def test_seed_commands_train_then_test(user_dir, trained, capsys):
    ckpt = next(trained.glob("*_final.pth"))
    proc = cli(
        [
            "hyperpose",
            "test",
            BACKBONE,
            CAMBRIDGE,
            SHOP_TEST,
            "./configs/CambridgeLandmarks_config.json",
            "--checkpoint_path",
            str(ckpt),
            "--output_path",
            "./evals",
        ],
        capsys,
        cwd=user_dir,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ShopFacade" in proc.stdout and "latency" in proc.stdout
    evals = user_dir / "evals"
    summary = json.loads(next(evals.glob("*_summary.json")).read_text())
    assert summary["scenes"][0]["scene"] == "ShopFacade"
    assert summary["scenes"][0]["n_frames"] == len((user_dir / SHOP_TEST).read_text().splitlines()) - 1
    header = next(evals.glob("*_predictions.csv")).read_text().splitlines()[0]
    assert header.startswith("img_path,scene,t1_pred,") and header.endswith("pos_err_m,ori_err_deg")


@pytest.mark.slow
def test_reference_state_dict_tests_like_our_checkpoint(user_dir, trained, tmp_path, capsys):
    """A bare state_dict, as the reference writes, loads strictly in test mode and scores the same."""
    ours = next(trained.glob("*_final.pth"))
    bare = tmp_path / "reference_final.pth"
    torch.save(torch.load(ours, weights_only=True)["model"], bare)
    medians = []
    for ckpt in (ours, bare):
        proc = cli(
            [
                "hyperpose",
                "test",
                BACKBONE,
                CAMBRIDGE,
                SHOP_TEST,
                "./configs/CambridgeLandmarks_config.json",
                "--checkpoint_path",
                str(ckpt),
                "--output_path",
                str(tmp_path / ckpt.stem),
            ],
            capsys,
            cwd=user_dir,
        )
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(next((tmp_path / ckpt.stem).glob("*_summary.json")).read_text())
        medians.append(summary["scenes"][0]["median_pos_m"])
    assert medians[0] == medians[1]


def test_missing_backbone_file(user_dir, capsys):
    proc = cli(
        [
            "hyperpose",
            "train",
            "./models/backbones/nope.pth",
            CAMBRIDGE,
            SHOP_TRAIN,
            "./configs/CambridgeLandmarks_config.json",
        ],
        capsys,
        cwd=user_dir,
    )
    assert_one_line_error(proc, r"backbone.*nope\.pth")


def test_misspelt_config_section(user_dir, tmp_path, capsys):
    """A missing section means the model's defaults, but not beside a section that is no model."""
    cfg = json.loads((user_dir / "configs" / "CambridgeLandmarks_config.json").read_text())
    cfg["effposenett"] = cfg.pop("effposenet")
    path = write_config(tmp_path / "no_effposenet.json", cfg)
    proc = cli(["effposenet", "train", "random", CAMBRIDGE, SHOP_TRAIN, path], capsys, cwd=user_dir)
    assert_one_line_error(proc, r"is 'effposenett' meant to be 'effposenet'\?")


def test_checkpoint_of_another_model(user_dir, hyperpose_ckpt, capsys):
    ckpt = hyperpose_ckpt
    proc = cli(
        [
            "effposenet",
            "test",
            "random",
            CAMBRIDGE,
            SHOP_TEST,
            "./configs/CambridgeLandmarks_config.json",
            "--checkpoint_path",
            str(ckpt),
        ],
        capsys,
        cwd=user_dir,
    )
    assert_one_line_error(proc, r"'hyperpose' model, not 'effposenet'")


def test_image_missing_from_the_csv(user_dir, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(user_dir / CAMBRIDGE, root)
    victim = sorted((root / "ShopFacade").rglob("*.png"))[0]
    victim.unlink()
    proc = cli(
        [
            "hyperpose",
            "train",
            "random",
            str(root),
            str(root / SHOP_TRAIN.rsplit("/", 1)[1]),
            "./configs/CambridgeLandmarks_config.json",
        ],
        capsys,
        cwd=user_dir,
    )
    if victim.name not in proc.stderr:  # the removed frame may be a test frame; then train must succeed
        assert proc.returncode == 0, proc.stderr
        return
    assert_one_line_error(proc, r"missing")


def test_test_mode_needs_a_checkpoint(user_dir, capsys):
    proc = cli(
        [
            "hyperpose",
            "test",
            "random",
            CAMBRIDGE,
            SHOP_TEST,
            "./configs/CambridgeLandmarks_config.json",
        ],
        capsys,
        cwd=user_dir,
    )
    assert_one_line_error(proc, r"--checkpoint_path")


@pytest.mark.slow
def test_multi_scene_seed_commands(scenes3, tmp_path, capsys):
    config = write_config(tmp_path / "7Scenes_config.json", tiny_config_dict(n_epochs=1))
    all_scenes = scenes3 / "7scenes_all_scenes.csv"
    for model in ("mshyperpose", "mstransformer"):
        # The first training runs the script itself; the rest call its main in this process.
        args = [
            model,
            "train",
            "random",
            str(scenes3),
            str(all_scenes),
            str(config),
            "--output_path",
            str(tmp_path / model),
        ]
        if model == "mshyperpose":
            proc = run_script(["main_multi_scene.py", *args])
        else:
            proc = cli(args, capsys, multi_scene=True)
        assert proc.returncode == 0, proc.stderr
        ckpt = next((tmp_path / model).glob("run_*/*_final.pth"))
        assert torch.load(ckpt, weights_only=True)["scene_map"] == {"chess": 0, "fire": 1, "heads": 2}
        proc = cli(
            [
                model,
                "test",
                "random",
                str(scenes3),
                str(all_scenes),
                str(config),
                "--checkpoint_path",
                str(ckpt),
                "--test_dataset_id",
                "7scenes",
                "--output_path",
                str(tmp_path / "evals"),
            ],
            capsys,
            multi_scene=True,
        )
        assert proc.returncode == 0, proc.stderr
        canonical = "ems-transposenet" if model == "mstransformer" else model
        names = {p.name for p in (tmp_path / "evals").glob(f"*{ckpt.stem}*")}
        # Named after what was evaluated (the per-scene test files), not after the training CSV.
        assert names == {
            f"{canonical}_{ckpt.stem}_7scenes_test_{kind}"
            for kind in ("predictions.csv", "report.csv", "summary.json", "baselines.csv")
        }, names
        report = next((tmp_path / "evals").glob(f"*{ckpt.stem}*_report.csv")).read_text().splitlines()
        assert report[0].startswith("scene,pos,ori,")
        assert [r.split(",")[0] for r in report[1:4]] == ["chess", "fire", "heads"]
        assert report[4].startswith("average,") and report[5].startswith("weighted,")
        assert "scene accuracy" in proc.stdout
        rows = next((tmp_path / "evals").glob(f"*{ckpt.stem}*_predictions.csv")).read_text().splitlines()
        assert rows[0].endswith(",scene_pred")
        assert {r.rsplit(",", 1)[1] for r in rows[1:]} <= {"chess", "fire", "heads"}


@pytest.mark.parametrize("size", ["0", "-1"])
def test_batch_size_below_one_is_refused(user_dir, hyperpose_ckpt, size, capsys):
    ckpt = hyperpose_ckpt
    proc = cli(
        [
            "hyperpose",
            "test",
            BACKBONE,
            CAMBRIDGE,
            SHOP_TEST,
            "./configs/CambridgeLandmarks_config.json",
            "--checkpoint_path",
            str(ckpt),
            "--batch_size",
            size,
            "--output_path",
            "./evals_bs",
        ],
        capsys,
        cwd=user_dir,
    )
    assert_one_line_error(proc, rf"--batch_size must be >= 1, got {size}")


def _run_on_a_terminal(args: list[str], cwd) -> str:
    """Run main_single_scene.py's main with stderr on a pseudo-terminal, as in an interactive shell; returns
    what it showed."""
    import fcntl
    import os
    import pty
    import struct
    import sys
    import termios
    import threading

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # tqdm draws nothing at 0 columns
    chunks = []

    def read():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal was closed
                break
            if not data:
                break
            chunks.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    terminal = open(slave, "w", buffering=1, encoding="utf-8")
    saved = sys.stderr
    sys.stderr = terminal
    try:
        proc = run_main(cli_main, args, cwd=cwd)
    finally:
        sys.stderr = saved
        terminal.close()
        reader.join(timeout=60)
        os.close(master)
    assert proc.returncode == 0
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_progress_bars_only_on_a_terminal_and_never_with_quiet(user_dir, trained_proc):
    train_proc, run = trained_proc
    ckpt = next(run.glob("*_final.pth"))
    test = [
        "hyperpose",
        "test",
        BACKBONE,
        CAMBRIDGE,
        SHOP_TEST,
        "./configs/CambridgeLandmarks_config.json",
        "--checkpoint_path",
        str(ckpt),
        "--output_path",
        "./ev_tty",
    ]
    assert "it/s]" in _run_on_a_terminal(test, user_dir)  # tqdm's rate field
    assert "it/s]" not in _run_on_a_terminal(test + ["--quiet"], user_dir)
    # The training seed command ran with stderr a pipe, as under nohup or CI, and TQDM_DISABLE unset.
    assert "\r" not in train_proc.stderr and "epoch 2/2 loss" in train_proc.stderr


def test_each_warning_reaches_the_console_once_per_process(capsys):
    import logging
    import uuid

    from util.logs import setup_logging

    setup_logging()
    text = f"backbone: random init {uuid.uuid4()}"
    for _ in range(3):
        logging.getLogger("models.backbone").warning(text)
    logging.getLogger("models.backbone").warning(text + " (another)")
    err = capsys.readouterr().err
    assert err.count(text) == 2 and err.count(text + " (another)") == 1


def test_test_mode_ignores_backbone_path_because_the_checkpoint_holds_the_backbone(scene7, tmp_path, caplog):
    """A posenet checkpoint tested with an EfficientNet file, or the word 'checkpoint', as backbone_path:
    the same predictions, and no 'random init' warning."""
    import logging

    import torch

    from conftest import tiny_config_dict, write_config
    from engine.evaluation.evaluate import Evaluator
    from models.backbone import new_backbone
    from models.config import load_config
    from models.registry import build_model
    from util.checkpoint import save_checkpoint

    config = write_config(tmp_path / "c.json", tiny_config_dict())
    cfg = load_config(config, "posenet")
    ckpt = save_checkpoint(
        tmp_path / "posenet.pth",
        model_name="posenet",
        config=cfg,
        scene_map={"chess": 0},
        model=build_model("posenet", cfg, new_backbone("googlenet")),
        epoch=1,
    )
    effnet = tmp_path / "b0.pth"
    torch.save(new_backbone("efficientnet").state_dict(), effnet)
    preds = []
    for backbone_path in (str(effnet), "checkpoint", "random"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            ev = Evaluator(
                "posenet",
                backbone_path,
                scene7,
                scene7 / "abs_7scenes_pose.csv_chess_test.csv",
                config,
                device="cpu",
                progress=False,
            )
            result = ev.evaluate_checkpoint(ckpt)
        assert "random init" not in caplog.text
        preds.append(next(iter(result.predictions.values())).pose_pred_N7)
    assert all((p == preds[0]).all() for p in preds)


@pytest.mark.parametrize("multi_scene", [False, True])
def test_each_scene_setting_names_its_scripts_and_their_models(multi_scene):
    """The scripts a SceneSetting names exist and take exactly its models; --test_dataset_id where it says."""
    from engine.cli import build_parser
    from engine.evaluation.batch_eval import build_parser as build_batch_parser
    from models.registry import cli_choices, get_spec, model_names, scene_setting

    setting = scene_setting(multi_scene)
    assert {get_spec(n).setting for n in model_names(multi_scene)} == {setting}
    for script, parser in (
        (setting.script, build_parser(multi_scene)),
        (setting.batch_script, build_batch_parser(multi_scene)),
    ):
        assert (REPO / script).is_file() and f"multi_scene={multi_scene}" in (REPO / script).read_text()
        options = {s for action in parser._actions for s in action.option_strings}
        assert ("--test_dataset_id" in options) == setting.test_dataset_option, script
        model_action = next(a for a in parser._actions if a.dest == "model_name")
        assert tuple(model_action.choices) == cli_choices(multi_scene)
