"""Training loop shared by the single-scene and multi-scene models.

One run lives in ``<output_path>/run_<yy_mm_dd_HH_MM_SS>/``: the resolved config, a log file, ``metrics.csv``,
TensorBoard events, ``run_<stamp>_checkpoint-<epoch>.pth`` every ``n_freq_checkpoint`` epochs and
``run_<stamp>_final.pth``. Every epoch reseeds from (seed, epoch), so a run resumed from a checkpoint ends
with the same weights as an uninterrupted one on the CPU.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

from datasets.dataset import CameraPoseDataset
from datasets.samplers import SceneBalancedSampler
from datasets.transforms import build_transform
from models.backbone import load_backbone
from models.losses import CameraPoseLoss
from models.registry import build_model, model_class
from util.checkpoint import check_compatible, load_checkpoint, load_model_weights, save_checkpoint
from util.config import canonical_model_name, load_config
from util.device import make_deterministic, seed_everything, select_device
from util.errors import UserError
from util.io import atomic_write_text
from util.logs import add_log_file
from util.pose import pose_errors

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["epoch", "loss", "pose_loss", "scene_nll", "median_pos_m", "median_ori_deg", "scene_acc",
                  "lr", "s_x", "s_q", "seconds", "images_per_s"]


@dataclass
class TrainResult:
    run_dir: Path
    final_checkpoint: Path
    metrics: list[dict]


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: resuming at any epoch replays the same random stream."""
    return seed * 100_003 + epoch


def apply_freeze(model: nn.Module, config: dict) -> int:
    """Second-stage training: with ``freeze``, only parameters whose name contains one of the
    ``freeze_exclude_phrase`` substrings stay trainable (as in the reference). Returns the trainable count."""
    if config["freeze"]:
        phrases = config["freeze_exclude_phrase"]
        if isinstance(phrases, str):
            phrases = [phrases]
        for name, param in model.named_parameters():
            param.requires_grad_(any(p in name for p in phrases))
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if n == 0:
            raise UserError(f"freeze is on but no parameter name contains any of {phrases}")
        log.info("freeze: training %d parameters whose names contain one of %s", n, phrases)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_optimizer(model: nn.Module, loss_fn: nn.Module, config: dict) -> torch.optim.Optimizer:
    """Adam over the trainable model parameters (weight-decayed) and the loss weights (not decayed)."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad],
               "weight_decay": config["weight_decay"]}]
    loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
    if loss_params:
        groups.append({"params": loss_params, "weight_decay": 0.0})
    return torch.optim.Adam(groups, lr=config["lr"], eps=config["eps"])


def new_run_dir(output_path: str | Path) -> tuple[Path, str]:
    """A fresh ``run_<yy_mm_dd_HH_MM_SS>`` folder (suffixed if two runs start in the same second)."""
    stamp = "run_" + datetime.now().strftime("%y_%m_%d_%H_%M_%S")
    base, run_dir, k = stamp, Path(output_path) / stamp, 1
    while run_dir.exists():
        stamp = f"{base}_{k}"
        run_dir, k = Path(output_path) / stamp, k + 1
    run_dir.mkdir(parents=True)
    return run_dir, stamp


def write_metrics_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_metrics_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def prepare_model(model_name: str, backbone_path: str, config: dict, device: torch.device) -> nn.Module:
    backbone = load_backbone(backbone_path)
    # channels_last trains EfficientNet faster on the CPU (compare `bench/bench_single_scene.py
    # --memory-format contiguous`) and is the layout tensor cores want on CUDA.
    return build_model(model_name, config, backbone).to(device, memory_format=torch.channels_last)


def train(model_name: str, backbone_path: str, dataset_root: str | Path, labels_file: str | Path,
          config_path: str | Path, output_path: str | Path = "./models", *, override_config=None,
          resume: str | Path | None = None, init_checkpoint: str | Path | None = None, device: str = "auto",
          amp: bool = False, n_epochs: int | None = None, cache_dir: str | None = None) -> TrainResult:
    """Train ``model_name`` on a label CSV and return the run folder and its final checkpoint.

    ``resume`` continues a run (weights, optimizer, scheduler, epoch). ``init_checkpoint`` starts a new run
    from a checkpoint's weights only, ours or the reference's, as the reference's ``--checkpoint_path`` did
    in train mode; the second, ``freeze`` stage of the multi-stage recipe uses it.
    """
    model_name = canonical_model_name(model_name)
    config = load_config(config_path, model_name, override_config)
    if n_epochs is not None:
        if n_epochs < 1:
            raise UserError(f"--n_epochs must be >= 1, got {n_epochs}")
        config["n_epochs"] = n_epochs
    if cache_dir:
        config["cache_dir"] = str(cache_dir)
    dev = select_device(device, config.get("device_id"))
    if amp and dev.type != "cuda":
        raise UserError("--amp (mixed precision) needs a CUDA device")
    if dev.type == "cpu":  # the promise is a bit-reproducible CPU run; CUDA keeps its fast kernels
        make_deterministic()

    if resume and init_checkpoint:
        raise UserError("use either --resume (continue a run) or --checkpoint_path (start from its weights)")
    ckpt = load_checkpoint(resume) if resume else None
    if ckpt is not None and ckpt.get("format") == "reference":
        raise UserError(f"--resume {resume}: a bare reference state_dict holds no training state; "
                        f"resume needs a checkpoint written by this toolkit")
    init = load_checkpoint(init_checkpoint) if init_checkpoint else None
    source = ckpt or init
    scene_map = source["scene_map"] if source and source["scene_map"] else None
    dataset = CameraPoseDataset(dataset_root, labels_file, transform=build_transform(config, train=True),
                                scene_map=scene_map)
    if config["cache_dir"]:
        dataset.use_image_cache(config["cache_dir"], config["image_resize"], config["n_workers"])
    multi = model_class(model_name).multi_scene
    if multi:
        n_scenes = len(dataset.scene_map)
        if config.get("num_scenes") not in (None, n_scenes):
            raise UserError(f"config num_scenes={config['num_scenes']} but {labels_file} has {n_scenes} scenes "
                            f"({', '.join(dataset.scene_map)}); remove num_scenes or set it to {n_scenes}")
        config["num_scenes"] = n_scenes
    if source is not None:
        if source["format"] == "reference" and multi and config.get("nheads") != 8:
            log.warning("reference checkpoint: using 8 attention heads, as the reference code did "
                        "(it ignored nheads=%s)", config.get("nheads"))
            config["nheads"] = 8
        check_compatible(source, model_name, config, resume or init_checkpoint)

    seed_everything(config["seed"])
    model = prepare_model(model_name, backbone_path, config, dev)
    if config.get("bn_momentum") is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = config["bn_momentum"]
    loss_fn = CameraPoseLoss.from_config(config).to(dev)
    n_trainable = apply_freeze(model, config)
    optimizer = build_optimizer(model, loss_fn, config)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config["lr_scheduler_step_size"],
                                                gamma=config["lr_scheduler_gamma"])
    start_epoch = 0
    if init is not None:
        load_model_weights(model, init["model"], init_checkpoint)
        log.info("initialised %s from %s", model_name, init_checkpoint)
    if ckpt is not None:
        load_model_weights(model, ckpt["model"], resume)
        loss_fn.load_state_dict(ckpt["loss"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch = int(ckpt["epoch"])
        run_dir = Path(resume).resolve().parent
        stamp = ckpt["extra"].get("run_stamp", run_dir.name)
        log.info("resuming %s from epoch %d in %s", model_name, start_epoch, run_dir)
    else:
        run_dir, stamp = new_run_dir(output_path)

    file_handler = add_log_file(run_dir / "train.log")
    try:
        atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2) + "\n")
        log.info("run folder %s; model %s (%d parameters, %d trainable) on %s; %d training frames, %d scenes",
                 run_dir, model_name, sum(p.numel() for p in model.parameters()), n_trainable, dev,
                 len(dataset), len(dataset.scene_map))
        return _train_epochs(model_name, model, loss_fn, optimizer, scheduler, dataset, config, dev, amp, multi,
                             run_dir, stamp, start_epoch)
    finally:
        logging.getLogger().removeHandler(file_handler)
        file_handler.close()


def _train_epochs(model_name, model, loss_fn, optimizer, scheduler, dataset, config, dev, amp, multi,
                  run_dir: Path, stamp: str, start_epoch: int) -> TrainResult:
    from torch.utils.tensorboard import SummaryWriter  # slow import, only needed here

    metrics_path = run_dir / "metrics.csv"
    rows = [r for r in read_metrics_csv(metrics_path) if int(r["epoch"]) <= start_epoch]
    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_epoch + 1)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    nll = nn.NLLLoss()
    n_epochs = config["n_epochs"]
    ckpt_common = dict(model_name=model_name, config=config, scene_map=dataset.scene_map, model=model,
                       loss=loss_fn, optimizer=optimizer, scheduler=scheduler, extra={"run_stamp": stamp})
    try:
        for epoch in range(start_epoch + 1, n_epochs + 1):
            seed = epoch_seed(config["seed"], epoch)
            seed_everything(seed)
            generator = torch.Generator().manual_seed(seed)
            if multi and config.get("equalize_scenes"):
                sampler = SceneBalancedSampler(dataset.scene_ids, generator=generator)
            else:
                sampler = RandomSampler(dataset, generator=generator)
            loader = DataLoader(dataset, batch_size=config["batch_size"], sampler=sampler,
                                num_workers=config["n_workers"], generator=generator,
                                pin_memory=dev.type == "cuda", persistent_workers=False)
            model.train()
            sums = {"loss": 0.0, "pose_loss": 0.0, "scene_nll": 0.0, "correct": 0, "n": 0}
            pos_errs, ori_errs = [], []
            t0 = time.perf_counter()
            bar = tqdm(loader, desc=f"epoch {epoch}/{n_epochs}", leave=False, dynamic_ncols=True)
            for step, batch in enumerate(bar, 1):
                img = batch["img"].to(dev, non_blocking=True, memory_format=torch.channels_last)
                pose_gt = batch["pose"].to(dev, non_blocking=True)
                with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=amp):
                    if multi:
                        scene = batch["scene"].to(dev, non_blocking=True)
                        pose_pred, scene_logp = model(img, scene)
                        pose_loss = loss_fn(pose_pred, pose_gt)
                        scene_loss = nll(scene_logp.float(), scene)
                        loss = pose_loss + scene_loss
                    else:
                        pose_pred = model(img)
                        loss = pose_loss = loss_fn(pose_pred, pose_gt)
                        scene_loss = None
                if not torch.isfinite(loss):
                    raise UserError(f"training diverged at epoch {epoch}, batch {step}: loss is {loss.item()}; "
                                    f"try a lower lr")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()

                b = img.shape[0]
                with torch.no_grad():
                    pos_err, ori_err = pose_errors(pose_pred.detach().float(), pose_gt)
                pos_errs.append(pos_err.cpu())
                ori_errs.append(ori_err.cpu())
                sums["loss"] += loss.item() * b
                sums["pose_loss"] += pose_loss.item() * b
                if scene_loss is not None:
                    sums["scene_nll"] += scene_loss.item() * b
                    sums["correct"] += int((scene_logp.argmax(1) == scene).sum())
                sums["n"] += b
                bar.set_postfix(loss=f"{sums['loss'] / sums['n']:.3f}", pos=f"{pos_err.median():.2f}m",
                                ori=f"{ori_err.median():.1f}deg")
                if step % config["n_freq_print"] == 0:
                    log.debug("epoch %d batch %d/%d loss %.4f pos %.3f m ori %.2f deg", epoch, step, len(loader),
                              loss.item(), pos_err.median(), ori_err.median())
            bar.close()
            scheduler.step()
            seconds = time.perf_counter() - t0
            pos_all, ori_all = torch.cat(pos_errs), torch.cat(ori_errs)
            row = {
                "epoch": epoch, "loss": sums["loss"] / sums["n"], "pose_loss": sums["pose_loss"] / sums["n"],
                "scene_nll": sums["scene_nll"] / sums["n"] if multi else "",
                "median_pos_m": float(pos_all.median()), "median_ori_deg": float(ori_all.median()),
                "scene_acc": sums["correct"] / sums["n"] if multi else "",
                "lr": optimizer.param_groups[0]["lr"], "s_x": loss_fn.s_x.item(), "s_q": loss_fn.s_q.item(),
                "seconds": round(seconds, 3), "images_per_s": round(sums["n"] / seconds, 2),
            }
            rows.append(row)
            write_metrics_csv(metrics_path, rows)
            for key in ("loss", "pose_loss", "median_pos_m", "median_ori_deg", "lr", "s_x", "s_q", "images_per_s"):
                writer.add_scalar(f"train/{key}", row[key], epoch)
            if multi:
                writer.add_scalar("train/scene_acc", row["scene_acc"], epoch)
                writer.add_scalar("train/scene_nll", row["scene_nll"], epoch)
            log.info("epoch %d/%d loss %.4f median %.3f m %.2f deg%s lr %.2e (%.1f images/s)", epoch, n_epochs,
                     row["loss"], row["median_pos_m"], row["median_ori_deg"],
                     f" scene acc {row['scene_acc']:.3f}" if multi else "", row["lr"], row["images_per_s"])
            if epoch % config["n_freq_checkpoint"] == 0:
                path = save_checkpoint(run_dir / f"{stamp}_checkpoint-{epoch}.pth", epoch=epoch, **ckpt_common)
                log.info("saved %s", path.name)
        final = save_checkpoint(run_dir / f"{stamp}_final.pth", epoch=max(n_epochs, start_epoch), **ckpt_common)
        log.info("saved %s", final.name)
    finally:
        writer.close()
    return TrainResult(run_dir=run_dir, final_checkpoint=final, metrics=rows)


def train_mean_pose(dataset: CameraPoseDataset) -> np.ndarray:
    """The mean training pose (mean position, chordal-mean orientation): the baseline any APR must beat."""
    t = dataset.poses_N7[:, :3].mean(0)
    q = dataset.poses_N7[:, 3:].astype(np.float64)
    # Principal eigenvector of sum q q^T: the quaternion mean that is blind to the q/-q sign.
    eigval, eigvec = np.linalg.eigh(q.T @ q)
    return np.concatenate([t, eigvec[:, -1]]).astype(np.float32)
