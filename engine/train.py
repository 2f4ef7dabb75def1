"""Training loop shared by the single-scene and multi-scene models, in phases: set up the run
(:func:`train`), build the loader (:meth:`Trainer.make_loader`), run one epoch (:meth:`Trainer.run_epoch`)
of steps (:meth:`Trainer.step`), save (:meth:`Trainer.save`).

One run lives in ``<output_path>/run_<yy_mm_dd_HH_MM_SS>/``: the resolved config, a log file, ``metrics.csv``,
TensorBoard events, ``run_<stamp>_checkpoint-<epoch>.pth`` every ``n_freq_checkpoint`` epochs and
``run_<stamp>_final.pth``. The order of every epoch, each sample's augmentation and each process's random
stream derive from (seed, epoch), so a run resumed from a checkpoint ends with the same weights as an
uninterrupted one on the CPU, whatever the number of DataLoader workers.

Under ``torchrun`` every process trains on its share of each global batch of ``batch_size`` x processes
images with DistributedDataParallel; rank 0 alone logs and writes, and checkpoints hold the plain model.
``micro_batches`` k splits each batch into k parts whose gradients add up before one optimizer step;
part i draws from the random stream process i would use, so one process with ``micro_batches`` W and
``batch_size`` B x W reproduces a W-process run with ``batch_size`` B (up to float rounding).
"""
from __future__ import annotations

import contextlib
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
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.dataset import CameraPoseDataset
from datasets.samplers import EpochSampler, SeededSamples, epoch_seed
from datasets.transforms import build_transform
from models.backbone import load_backbone
from models.losses import CameraPoseLoss
from models.registry import build_model, canonical_model_name, get_spec
from util.checkpoint import check_compatible, load_checkpoint, load_model_weights, save_checkpoint
from util.config import load_config
from util.device import RandomStreams, autocast_dtype, make_deterministic, seed_everything
from util.distributed import (DistContext, all_gather_cat, all_reduce_sum, barrier, broadcast_object,
                              init_distributed, shutdown)
from util.errors import UserError
from util.io import atomic_write_text
from util.logs import add_log_file
from util.pose import pose_errors

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["epoch", "loss", "pose_loss", "scene_nll", "median_pos_m", "median_ori_deg", "scene_acc",
                  "lr", "s_x", "s_q", "seconds", "images_per_s"]
TB_KEYS = ("loss", "pose_loss", "median_pos_m", "median_ori_deg", "lr", "s_x", "s_q", "images_per_s")
STREAM_STRIDE = 1_000_003  # seed distance between the random streams of processes / micro-batches


@dataclass
class TrainResult:
    run_dir: Path
    final_checkpoint: Path
    metrics: list[dict]
    model: nn.Module | None = None  # the trained model, unwrapped, on its training device


def stream_seed(seed: int, epoch: int, stream: int) -> int:
    """Seed of random stream ``stream`` (process rank x micro-batches + micro-batch) in one epoch;
    stream 0 is :func:`datasets.samplers.epoch_seed`."""
    return epoch_seed(seed, epoch) + STREAM_STRIDE * stream


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
    backbone = load_backbone(backbone_path, config["backbone_type"])
    # channels_last trains EfficientNet faster on the CPU (compare `bench/bench_single_scene.py
    # --memory-format contiguous`) and is the layout tensor cores want on CUDA.
    return build_model(model_name, config, backbone).to(device, memory_format=torch.channels_last)


class TrainingModule(nn.Module):
    """The model and its loss as one module, so that DistributedDataParallel also averages the gradients
    of the learned loss weights."""

    def __init__(self, model: nn.Module, loss_fn: CameraPoseLoss, multi_scene: bool):
        super().__init__()
        self.model, self.loss_fn, self.multi_scene = model, loss_fn, multi_scene

    def forward(self, img_B3HW, pose_gt_B7, scene_gt_B):
        # Multi-scene models train with the true scene's head (as in the reference); the others ignore it.
        pose_B7, scene_logp_BS = self.model(img_B3HW, scene_gt_B if self.multi_scene else None)
        loss, pose_loss, scene_nll = self.loss_fn.total(pose_B7, pose_gt_B7, scene_logp_BS, scene_gt_B)
        return loss, pose_loss, scene_nll, pose_B7, scene_logp_BS


class Trainer:
    """One training run, phase by phase; built by :func:`train`, which also handles resuming."""

    def __init__(self, model_name: str, model: nn.Module, loss_fn: CameraPoseLoss, optimizer, scheduler,
                 dataset: CameraPoseDataset, config: dict, device: torch.device, run_dir: Path, stamp: str, *,
                 ctx: DistContext = DistContext(), amp_dtype: torch.dtype | None = None, compile: bool = False,
                 micro_batches: int = 1):
        self.model_name, self.model, self.loss_fn = model_name, model, loss_fn
        self.optimizer, self.scheduler, self.dataset, self.config = optimizer, scheduler, dataset, config
        self.device, self.run_dir, self.stamp, self.ctx = device, run_dir, stamp, ctx
        self.amp_dtype, self.micro_batches = amp_dtype, micro_batches
        self.multi = get_spec(model_name).multi_scene
        module = TrainingModule(model, loss_fn, self.multi)
        self.ddp = None
        if ctx.enabled:
            # The backbone's ImageNet classifier (and, with some reductions, late blocks) never gets a gradient.
            module = self.ddp = DistributedDataParallel(
                module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
        self.module = torch.compile(module) if compile else module
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
        self.streams: RandomStreams | None = None
        self.sampler: EpochSampler | None = None

    # Build the loader ------------------------------------------------------------------------------------
    def make_loader(self) -> DataLoader:
        """One loader for the whole run: workers persist across epochs, the sampler sets each epoch's order."""
        c = self.config
        self.sampler = EpochSampler(self.dataset.scene_ids, c["seed"], c["batch_size"],
                                    equalize_scenes=self.multi and bool(c.get("equalize_scenes")),
                                    rank=self.ctx.rank, world_size=self.ctx.world_size)
        return DataLoader(SeededSamples(self.dataset), batch_size=c["batch_size"], sampler=self.sampler,
                          num_workers=c["n_workers"], persistent_workers=c["n_workers"] > 0,
                          pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(c["seed"]))

    # Run one epoch ---------------------------------------------------------------------------------------
    def run_epoch(self, loader: DataLoader, epoch: int) -> dict:
        """Train one epoch; returns its metrics row (over all processes)."""
        c, k = self.config, self.micro_batches
        self.sampler.set_epoch(epoch)
        streams = [self.ctx.rank * k + i for i in range(k)]
        seed_everything(stream_seed(c["seed"], epoch, streams[0]))
        self.streams = RandomStreams([stream_seed(c["seed"], epoch, s) for s in streams],
                                     self.device) if k > 1 else None
        self.model.train()
        sums = np.zeros(5)  # loss, pose_loss, scene_nll (each x images), correct scenes, images
        pos_errs, ori_errs = [], []
        t0 = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch}/{c['n_epochs']}", leave=False, dynamic_ncols=True,
                   **({} if self.ctx.is_main else {"disable": True}))
        for step, batch in enumerate(bar, 1):
            stats, pos_err, ori_err = self.step(batch, epoch, step)
            sums += stats
            pos_errs.append(pos_err.cpu())
            ori_errs.append(ori_err.cpu())
            bar.set_postfix(loss=f"{sums[0] / sums[4]:.3f}", pos=f"{pos_err.median():.2f}m",
                            ori=f"{ori_err.median():.1f}deg")
            if step % c["n_freq_print"] == 0:
                log.debug("epoch %d batch %d/%d loss %.4f pos %.3f m ori %.2f deg", epoch, step, len(loader),
                          stats[0] / stats[4], pos_err.median(), ori_err.median())
        bar.close()
        self.scheduler.step()
        seconds = time.perf_counter() - t0
        loss, pose_loss, scene_nll, correct, n = all_reduce_sum(self.ctx, sums.tolist(), self.device)
        pos_all = all_gather_cat(self.ctx, torch.cat(pos_errs), self.device)
        ori_all = all_gather_cat(self.ctx, torch.cat(ori_errs), self.device)
        return {
            "epoch": epoch, "loss": loss / n, "pose_loss": pose_loss / n,
            "scene_nll": scene_nll / n if self.multi else "",
            "median_pos_m": float(pos_all.median()), "median_ori_deg": float(ori_all.median()),
            "scene_acc": correct / n if self.multi else "",
            "lr": self.optimizer.param_groups[0]["lr"], "s_x": self.loss_fn.s_x.item(),
            "s_q": self.loss_fn.s_q.item(), "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 2),
        }

    # One step --------------------------------------------------------------------------------------------
    def step(self, batch: dict, epoch: int, step: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """One optimizer step on one batch; returns the summed statistics and the per-image errors."""
        dev = self.device
        img = batch["img"].to(dev, non_blocking=True, memory_format=torch.channels_last)
        pose_gt = batch["pose"].to(dev, non_blocking=True)
        scene_gt = batch["scene"].to(dev, non_blocking=True)
        n = img.shape[0]
        k = min(self.micro_batches, n)
        stats = np.zeros(5)
        preds = []
        self.optimizer.zero_grad(set_to_none=True)
        for i, part in enumerate(zip(img.tensor_split(k), pose_gt.tensor_split(k), scene_gt.tensor_split(k))):
            last = i == k - 1
            with contextlib.ExitStack() as stack:
                if self.ddp is not None and not last:
                    stack.enter_context(self.ddp.no_sync())  # gradients are all-reduced after the last part
                if self.streams is not None:
                    stack.enter_context(self.streams.use(i))
                if self.amp_dtype is not None:
                    stack.enter_context(torch.autocast(dev.type, dtype=self.amp_dtype))
                loss, pose_loss, scene_nll, pose_pred, scene_logp = self.module(*part)
                if not torch.isfinite(loss):
                    raise UserError(f"training diverged at epoch {epoch}, batch {step}: loss is {loss.item()}; "
                                    f"try a lower lr")
                b = part[0].shape[0]
                self.scaler.scale(loss * (b / n)).backward()
            stats += [loss.item() * b, pose_loss.item() * b, scene_nll.item() * b if scene_nll is not None else 0,
                      int((scene_logp.argmax(1) == part[2]).sum()) if scene_logp is not None else 0, b]
            preds.append(pose_pred.detach().float())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            pos_err, ori_err = pose_errors(torch.cat(preds), pose_gt)
        return stats, pos_err, ori_err

    # Save ------------------------------------------------------------------------------------------------
    def checkpoint_path(self, name: str) -> Path:
        return self.run_dir / f"{self.stamp}_{name}.pth"

    def save(self, name: str, epoch: int) -> Path:
        """Write ``<stamp>_<name>.pth`` with the unwrapped model (rank 0 only); returns its path on every rank."""
        path = self.checkpoint_path(name)
        if self.ctx.is_main:
            save_checkpoint(path, model_name=self.model_name, config=self.config, scene_map=self.dataset.scene_map,
                            model=self.model, loss=self.loss_fn, optimizer=self.optimizer,
                            scheduler=self.scheduler, epoch=epoch,
                            extra={"run_stamp": self.stamp, "world_size": self.ctx.world_size,
                                   "micro_batches": self.micro_batches})
            log.info("saved %s", path.name)
        return path

    # The run ---------------------------------------------------------------------------------------------
    def record(self, row: dict, rows: list[dict], writer) -> None:
        """Metrics CSV, TensorBoard and the console line of one epoch (rank 0 only)."""
        rows.append(row)
        write_metrics_csv(self.run_dir / "metrics.csv", rows)
        for key in TB_KEYS + (("scene_acc", "scene_nll") if self.multi else ()):
            writer.add_scalar(f"train/{key}", row[key], row["epoch"])
        log.info("epoch %d/%d loss %.4f median %.3f m %.2f deg%s lr %.2e (%.1f images/s)", row["epoch"],
                 self.config["n_epochs"], row["loss"], row["median_pos_m"], row["median_ori_deg"],
                 f" scene acc {row['scene_acc']:.3f}" if self.multi else "", row["lr"], row["images_per_s"])

    def fit(self, start_epoch: int = 0) -> TrainResult:
        """Epochs ``start_epoch + 1 .. n_epochs``, with periodic and final checkpoints."""
        rows, writer = [], None
        if self.ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter  # slow import, only needed here
            rows = [r for r in read_metrics_csv(self.run_dir / "metrics.csv") if int(r["epoch"]) <= start_epoch]
            writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=start_epoch + 1)
        loader = self.make_loader()
        try:
            for epoch in range(start_epoch + 1, self.config["n_epochs"] + 1):
                row = self.run_epoch(loader, epoch)
                if self.ctx.is_main:
                    self.record(row, rows, writer)
                if epoch % self.config["n_freq_checkpoint"] == 0:
                    self.save(f"checkpoint-{epoch}", epoch)
            final = self.save("final", max(self.config["n_epochs"], start_epoch))
        finally:
            del loader  # ends persistent workers
            if writer is not None:
                writer.close()
        barrier(self.ctx)  # nobody leaves before rank 0 has written the final checkpoint
        return TrainResult(run_dir=self.run_dir, final_checkpoint=final, metrics=rows, model=self.model)


def _sources(resume, init_checkpoint) -> tuple[dict | None, dict | None]:
    """(checkpoint to resume, checkpoint to initialise from), each read once."""
    if resume and init_checkpoint:
        raise UserError("use either --resume (continue a run) or --checkpoint_path (start from its weights)")
    ckpt = load_checkpoint(resume) if resume else None
    if ckpt is not None and ckpt.get("format") == "reference":
        raise UserError(f"--resume {resume}: a bare reference state_dict holds no training state; "
                        f"resume needs a checkpoint written by this toolkit")
    return ckpt, load_checkpoint(init_checkpoint) if init_checkpoint else None


def _attach_cache(dataset: CameraPoseDataset, config: dict, ctx: DistContext) -> None:
    """The decoded-image cache: the first process of each node builds it, the others then open it."""
    builder = ctx.local_rank == 0
    if builder:
        dataset.use_image_cache(config["cache_dir"], config["image_resize"], config["n_workers"])
    barrier(ctx)
    if not builder and not dataset.use_image_cache(config["cache_dir"], config["image_resize"], build=False):
        raise UserError(f"process {ctx.rank} cannot read the image cache in {config['cache_dir']} that local "
                        f"rank 0 built")


def train(model_name: str, backbone_path: str, dataset_root: str | Path, labels_file: str | Path,
          config_path: str | Path, output_path: str | Path = "./models", *, override_config=None,
          resume: str | Path | None = None, init_checkpoint: str | Path | None = None, device: str = "auto",
          amp=False, n_epochs: int | None = None, cache_dir: str | Path | None = None, compile: bool = False,
          micro_batches: int = 1) -> TrainResult:
    """Train ``model_name`` on a label CSV and return the run folder and its final checkpoint.

    ``resume`` continues a run (weights, optimizer, scheduler, epoch), also with another number of
    processes. ``init_checkpoint`` starts a new run from a checkpoint's weights only, ours or the
    reference's, as the reference's ``--checkpoint_path`` did in train mode; the second, ``freeze`` stage
    of the multi-stage recipe uses it. ``amp``: False, ``auto``, ``bf16`` or ``fp16`` (see
    :func:`util.device.autocast_dtype`); ``compile`` wraps the training module in ``torch.compile``.
    """
    model_name = canonical_model_name(model_name)
    config = load_config(config_path, model_name, override_config)
    if n_epochs is not None:
        if n_epochs < 1:
            raise UserError(f"--n_epochs must be >= 1, got {n_epochs}")
        config["n_epochs"] = n_epochs
    if micro_batches < 1 or micro_batches > config["batch_size"]:
        raise UserError(f"--micro_batches must be in 1..batch_size ({config['batch_size']}), got {micro_batches}")
    if cache_dir:
        config["cache_dir"] = str(cache_dir)
    ckpt, init = _sources(resume, init_checkpoint)
    ctx, dev = init_distributed(device, config.get("device_id"))
    file_handler = None
    try:
        amp_dtype = autocast_dtype(amp, dev)
        if dev.type == "cpu":  # the promise is a bit-reproducible CPU run; CUDA keeps its fast kernels
            make_deterministic()
        source = ckpt or init
        scene_map = source["scene_map"] if source and source["scene_map"] else None
        dataset = CameraPoseDataset(dataset_root, labels_file, transform=build_transform(config, train=True),
                                    scene_map=scene_map)
        if config["cache_dir"]:
            _attach_cache(dataset, config, ctx)
        multi = get_spec(model_name).multi_scene
        if multi:
            n_scenes = len(dataset.scene_map)
            if config.get("num_scenes") not in (None, n_scenes):
                raise UserError(f"config num_scenes={config['num_scenes']} but {labels_file} has {n_scenes} "
                                f"scenes ({', '.join(dataset.scene_map)}); remove num_scenes or set it to {n_scenes}")
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
            run_dir, stamp = broadcast_object(ctx, new_run_dir(output_path) if ctx.is_main else None)

        if ctx.is_main:
            file_handler = add_log_file(run_dir / "train.log")
            atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2) + "\n")
        log.info("run folder %s; model %s (%d parameters, %d trainable) on %s; %d training frames, %d scenes; "
                 "global batch %d (%d process(es) x %d)%s%s", run_dir, model_name,
                 sum(p.numel() for p in model.parameters()), n_trainable, dev, len(dataset), len(dataset.scene_map),
                 config["batch_size"] * ctx.world_size, ctx.world_size, config["batch_size"],
                 f" in {micro_batches} micro-batches" if micro_batches > 1 else "",
                 f"; autocast {amp_dtype}" if amp_dtype is not None else "")
        trainer = Trainer(model_name, model, loss_fn, optimizer, scheduler, dataset, config, dev, run_dir, stamp,
                          ctx=ctx, amp_dtype=amp_dtype, compile=compile, micro_batches=micro_batches)
        return trainer.fit(start_epoch)
    finally:
        if file_handler is not None:
            logging.getLogger().removeHandler(file_handler)
            file_handler.close()
        shutdown(ctx)


def train_mean_pose(dataset: CameraPoseDataset) -> np.ndarray:
    """The mean training pose (mean position, chordal-mean orientation): the baseline any APR must beat."""
    t = dataset.poses_N7[:, :3].mean(0)
    q = dataset.poses_N7[:, 3:].astype(np.float64)
    # Principal eigenvector of sum q q^T: the quaternion mean that is blind to the q/-q sign.
    eigval, eigvec = np.linalg.eigh(q.T @ q)
    return np.concatenate([t, eigvec[:, -1]]).astype(np.float32)
