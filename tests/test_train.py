"""Training: run folder contents, checkpoint contents, resume equivalence, freeze, config/CSV agreement."""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading

import pytest
import torch

from conftest import tiny_config_dict, write_config
from engine.training.train import new_run_dir, train
from models.backbone import load_backbone
from models.config import load_config
from models.registry import build_model
from util.checkpoint import save_checkpoint
from util.device import seed_everything
from util.errors import UserError


def chess(root, split):
    return root / f"abs_7scenes_pose.csv_chess_{split}.csv"


@pytest.mark.slow
def test_run_folder_holds_checkpoints_metrics_and_logs(scene7, tiny_config, tmp_path):
    result = train("hyperpose", "random", scene7, chess(scene7, "train"), tiny_config, tmp_path, device="cpu")
    run = result.run_dir
    assert re.fullmatch(r"run_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}(_\d+)?", run.name)
    names = sorted(p.name for p in run.glob("*.pth"))
    assert names == sorted([f"{run.name}_checkpoint-1.pth", f"{run.name}_checkpoint-2.pth", f"{run.name}_final.pth"])
    assert json.loads((run / "config.json").read_text())["model_name"] == "hyperpose"
    assert "epoch 2/2" in (run / "train.log").read_text()
    metrics = (run / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("epoch,loss,") and len(metrics) == 3
    assert any((run / "tensorboard").iterdir())

    ckpt = torch.load(result.final_checkpoint, map_location="cpu", weights_only=True)
    assert ckpt["format"] == "hyperpose-checkpoint" and ckpt["epoch"] == 2
    assert set(ckpt["loss"]) == {"s_x", "s_q"}
    assert ckpt["scene_map"] == {"chess": 0}
    assert ckpt["optimizer"]["param_groups"][1]["weight_decay"] == 0.0  # s_x, s_q are not decayed
    assert ckpt["optimizer"]["param_groups"][0]["weight_decay"] > 0.0
    assert not list(run.glob("*.tmp"))


@pytest.mark.slow
def test_resumed_run_ends_with_the_same_weights(scene7, tmp_path):
    # A run killed in epoch 2 has checkpoint-1 as its latest, which holds the optimizer state; "all" keeps
    # that state in the copy taken here from a complete run.
    cfg = tiny_config_dict()
    cfg["general"]["keep_optimizer_state"] = "all"
    tiny_config = write_config(tmp_path / "all.json", cfg)
    full = train("effposenet", "random", scene7, chess(scene7, "train"), tiny_config, tmp_path / "a", device="cpu")
    resume_dir = tmp_path / "b" / full.run_dir.name
    resume_dir.mkdir(parents=True)
    first = resume_dir / f"{full.run_dir.name}_checkpoint-1.pth"
    shutil.copy(full.run_dir / first.name, first)
    shutil.copy(full.run_dir / "metrics.csv", resume_dir / "metrics.csv")
    resumed = train("effposenet", "random", scene7, chess(scene7, "train"), tiny_config, resume=first, device="cpu")
    assert resumed.run_dir == resume_dir
    a = torch.load(full.final_checkpoint, weights_only=True)
    b = torch.load(resumed.final_checkpoint, weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["loss"]:
        assert torch.equal(a["loss"][k], b["loss"][k]), k
    assert len((resume_dir / "metrics.csv").read_text().splitlines()) == 3


@pytest.mark.parametrize(
    "model_name, phrases",
    [
        ("hyperpose", ["hyper_in_t_proj", "hyper_in_t", "hyper_in_t_fc_2", "hypernet_t_fc_h2"]),
        ("mshyperpose", ["hyper_in_rot", "hypernet_rot", "regressor_head_rot", "transformer_rot", "input_proj_rot"]),
    ],
)
def test_freeze_trains_only_the_excluded_phrases(model_name, phrases, scene7, scenes3, tmp_path):
    cfg = tiny_config_dict(n_epochs=1)
    cfg[model_name].update(freeze=True, freeze_exclude_phrase=phrases)
    config_path = write_config(tmp_path / "cfg.json", cfg)
    root = scene7 if model_name == "hyperpose" else scenes3
    labels = chess(root, "train") if model_name == "hyperpose" else root / "7scenes_all_scenes.csv"
    result = train(model_name, "random", root, labels, config_path, tmp_path / "out", device="cpu")

    config = load_config(config_path, model_name)
    if model_name == "mshyperpose":
        config["num_scenes"] = 3
    seed_everything(config["seed"])  # the trainer builds its model right after this same seeding
    initial = build_model(model_name, config, load_backbone("random"))
    final = torch.load(result.final_checkpoint, weights_only=True)["model"]
    changed = {name for name, p in initial.named_parameters() if not torch.equal(p.detach(), final[name])}
    trainable = {name for name, _ in initial.named_parameters() if any(ph in name for ph in phrases)}
    assert changed, "nothing trained"
    assert changed <= trainable, sorted(changed - trainable)[:5]


def test_num_scenes_must_agree_with_the_csv(scenes3, tmp_path):
    cfg = tiny_config_dict()
    cfg["mshyperpose"]["num_scenes"] = 7
    with pytest.raises(UserError, match=r"num_scenes=7 .* 3 scenes"):
        train(
            "mshyperpose",
            "random",
            scenes3,
            scenes3 / "7scenes_all_scenes.csv",
            write_config(tmp_path / "c.json", cfg),
            tmp_path,
            device="cpu",
        )


def test_fp16_needs_cuda(scene7, tiny_config, tmp_path):
    with pytest.raises(UserError, match="amp fp16.*CUDA"):
        train("hyperpose", "random", scene7, chess(scene7, "train"), tiny_config, tmp_path, device="cpu", amp="fp16")


@pytest.mark.slow
def test_persistent_workers_give_the_same_weights_and_resume_bit_identically(scene7, tmp_path, monkeypatch):
    """The augmentation of a sample depends on (seed, epoch, position) only, not on the workers."""
    import util.device

    # Two CPUs more than the torch threads, so that two workers really start beside them.
    monkeypatch.setattr(util.device, "cpu_count", lambda: torch.get_num_threads() + 2)
    assert util.device.cap_workers(2, torch.device("cpu")) == 2
    runs = {}
    for workers in (0, 2):
        cfg = tiny_config_dict()
        cfg["general"].update(n_workers=workers, keep_optimizer_state="all")  # checkpoint-1 resumes exactly
        config = write_config(tmp_path / f"cfg{workers}.json", cfg)
        runs[workers] = train(
            "hyperpose", "random", scene7, chess(scene7, "train"), config, tmp_path / f"w{workers}", device="cpu"
        )
    a = torch.load(runs[0].final_checkpoint, weights_only=True)["model"]
    b = torch.load(runs[2].final_checkpoint, weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    first = tmp_path / "r" / runs[2].run_dir.name / f"{runs[2].run_dir.name}_checkpoint-1.pth"
    first.parent.mkdir(parents=True)
    shutil.copy(runs[2].run_dir / first.name, first)
    resumed = train(
        "hyperpose",
        "random",
        scene7,
        chess(scene7, "train"),
        tmp_path / "cfg2.json",
        tmp_path / "x",
        resume=first,
        device="cpu",
    )
    c = torch.load(resumed.final_checkpoint, weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], c[k]), k


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["effposenet", "mshyperpose"])
def test_bf16_autocast_trains_on_the_cpu(model_name, scene7, scenes3, tiny_config, tmp_path):
    root = scene7 if model_name == "effposenet" else scenes3
    labels = chess(root, "train") if model_name == "effposenet" else root / "7scenes_all_scenes.csv"
    result = train(model_name, "random", root, labels, tiny_config, tmp_path, device="cpu", amp="bf16", n_epochs=1)
    ckpt = torch.load(result.final_checkpoint, weights_only=True)
    assert all(v.dtype != torch.bfloat16 for v in ckpt["model"].values())  # weights stay fp32
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert "autocast torch.bfloat16" in (result.run_dir / "train.log").read_text()


def test_micro_batches_must_fit_the_batch(scene7, tiny_config, tmp_path):
    with pytest.raises(UserError, match="micro_batches"):
        train(
            "effposenet", "random", scene7, chess(scene7, "train"), tiny_config, tmp_path, device="cpu", micro_batches=5
        )


@pytest.mark.slow
def test_bf16_test_mode_on_the_cpu_is_close_to_fp32(scene7, tiny_config, tmp_path):
    from engine.evaluation.evaluate import Evaluator

    run = train("effposenet", "random", scene7, chess(scene7, "train"), tiny_config, tmp_path, device="cpu", n_epochs=1)
    preds = {}
    for amp in (False, "bf16"):
        ev = Evaluator(
            "effposenet", "random", scene7, chess(scene7, "test"), tiny_config, device="cpu", amp=amp, progress=False
        )
        result = ev.evaluate_checkpoint(run.final_checkpoint, timing=False)
        preds[amp] = torch.from_numpy(next(iter(result.predictions.values())).pose_pred_N7)
    assert not torch.equal(preds[False], preds["bf16"])  # bf16 really ran
    torch.testing.assert_close(preds["bf16"], preds[False], atol=0.05, rtol=0.05)


def test_a_single_image_part_at_1x1_maps_is_a_clear_error(scene7, tiny_config, tmp_path):
    with pytest.raises(UserError, match="part of 1 image.*BatchNorm"):
        train(
            "effposenet",
            "random",
            scene7,
            chess(scene7, "train"),
            tiny_config,
            tmp_path,
            device="cpu",
            micro_batches=4,
            n_epochs=1,
        )


def test_divergence_on_the_last_step_saves_nothing(scene7, tmp_path):
    """One step per epoch and an absurd lr: every loss the trainer sees is finite, the weights after the
    last step are not. That used to end with exit 0 and a 'final' checkpoint that predicts NaN."""
    cfg = tiny_config_dict(n_epochs=1)
    cfg["effposenet"].update(batch_size=16, lr=1e30)
    with pytest.raises(UserError, match=r"training diverged at epoch 1: .*NaN or inf"):
        train(
            "effposenet",
            "random",
            scene7,
            chess(scene7, "train"),
            write_config(tmp_path / "c.json", cfg),
            tmp_path / "out",
            device="cpu",
        )
    run = next((tmp_path / "out").glob("run_*"))
    assert not list(run.glob("*.pth"))
    assert "run failed: training diverged at epoch 1" in (run / "train.log").read_text()


def test_save_checkpoint_refuses_a_non_finite_model(tmp_path):
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.bias[0] = float("nan")
    with pytest.raises(UserError, match=r"not saving m\.pth: .*\(e\.g\. bias\)"):
        save_checkpoint(tmp_path / "m.pth", model_name="effposenet", config={}, model=model, epoch=1)
    assert not list(tmp_path.iterdir())


def test_simultaneous_runs_get_distinct_folders(tmp_path):
    """Threads released together all ask for a run folder in the same second."""
    n, rounds = 8, 10
    for r in range(rounds):
        barrier, results, errors = threading.Barrier(n), [], []

        def start(barrier=barrier, results=results, errors=errors, r=r):
            barrier.wait()
            try:
                results.append(new_run_dir(tmp_path / str(r))[0])
            except Exception as exc:  # collected, so that the test reports it instead of the thread
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert len(set(results)) == n and all(p.is_dir() for p in results)


def test_inputs_are_checked_before_the_run_folder_and_later_failures_are_logged(scene7, tiny_config, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(scene7, root)
    labels = chess(root, "train")
    img_paths = [line.split(",")[3] for line in labels.read_text().splitlines()[1:]]
    (root / img_paths[0]).write_bytes(b"not a png")  # in the decoded sample: fails before any folder
    with pytest.raises(UserError, match="cannot decode image"):
        train("effposenet", "random", root, labels, tiny_config, tmp_path / "out", device="cpu")
    assert not list((tmp_path / "out").glob("run_*"))

    shutil.copy(scene7 / img_paths[0], root / img_paths[0])
    (root / img_paths[1]).write_bytes(b"not a png")  # outside the sample: found mid-epoch
    with pytest.raises(UserError, match="cannot decode image"):
        train("effposenet", "random", root, labels, tiny_config, tmp_path / "out", device="cpu")
    run = next((tmp_path / "out").glob("run_*"))
    assert "run failed: cannot decode image" in (run / "train.log").read_text().splitlines()[-1]


@pytest.mark.slow
def test_only_the_latest_checkpoint_keeps_the_optimizer_state(scene7, tiny_config, tmp_path, caplog):
    result = train("effposenet", "random", scene7, chess(scene7, "train"), tiny_config, tmp_path, device="cpu")
    run = result.run_dir
    first, second = (run / f"{run.name}_checkpoint-{n}.pth" for n in (1, 2))
    for path in (first, second):
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["optimizer"] == {} and ckpt["epoch"] in (1, 2) and ckpt["scheduler"] and ckpt["loss"]
        assert ckpt["scene_map"] == {"chess": 0} and ckpt["config"]["model_name"] == "effposenet"
    final = torch.load(result.final_checkpoint, weights_only=True)
    assert final["optimizer"]["state"]
    assert result.final_checkpoint.stat().st_size > 2.5 * first.stat().st_size  # Adam's two moments
    with caplog.at_level(logging.WARNING):
        # checkpoint-2 and the final are newer, so the resumed run branches into a folder of its own.
        resumed = train(
            "effposenet",
            "random",
            scene7,
            chess(scene7, "train"),
            tiny_config,
            tmp_path / "branch",
            resume=first,
            device="cpu",
        )
    assert "holds no optimizer state" in caplog.text and "Adam restarts" in caplog.text
    assert torch.load(resumed.final_checkpoint, weights_only=True)["optimizer"]["state"]


def test_the_finite_check_sees_the_model_after_recalibration(scene7, tmp_path, monkeypatch):
    """Recalibration runs before a save; statistics it left non-finite must stop the save like any divergence."""
    import engine.training.trainer as trainer_module

    real = trainer_module.recalibrate

    def poisoned(model, loader, n_batches, device):
        n = real(model, loader, n_batches, device)
        layer = next(m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
        layer.running_var.fill_(float("inf"))  # what an overflowing batch would leave
        return n

    monkeypatch.setattr(trainer_module, "recalibrate", poisoned)
    cfg = tiny_config_dict(n_epochs=1)
    cfg["effposenet"].update(bn_recalibrate_batches=1)
    with pytest.raises(UserError, match=r"training diverged at epoch 1"):
        train(
            "effposenet",
            "random",
            scene7,
            chess(scene7, "train"),
            write_config(tmp_path / "c.json", cfg),
            tmp_path / "out",
            device="cpu",
        )
    assert not list(next((tmp_path / "out").glob("run_*")).glob("*.pth"))
