"""The training loop in phases: build the loader (:meth:`Trainer.make_loader`), run one epoch
(:meth:`Trainer.run_epoch`) of steps (:meth:`Trainer.step`), save (:meth:`Trainer.save`); a resumed run first
restores its training state (:meth:`Trainer.resume`). :func:`engine.training.train.train` sets a run up and calls
:meth:`Trainer.fit`.

The order of every epoch, each sample's augmentation and each process's random stream derive from
(seed, epoch), so a resumed run ends with the same weights as an uninterrupted one on the CPU, whatever
the number of DataLoader workers. Under ``torchrun`` every process trains on its share of each global
batch with DistributedDataParallel; rank 0 alone logs and writes, and checkpoints hold the plain model.
``micro_batches`` k splits each batch into k parts whose gradients add up before one optimizer step; part
i draws from the random stream process i would use, so one process with ``micro_batches`` W and
``batch_size`` B x W reproduces a W-process run with ``batch_size`` B (up to float rounding).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from datasets.dataset import CameraPoseDataset
from datasets.samplers import EpochSampler, SeededSamples, epoch_seed
from engine.training.batchnorm import eval_prediction_spread, log_spread, plain_loader, recalibrate
from models.losses import CameraPoseLoss
from models.registry import get_spec
from util.checkpoint import drop_optimizer_state, load_model_weights, non_finite_tensors, save_checkpoint
from util.device import RandomStreams, cap_workers, seed_everything
from util.distributed import DistContext, all_gather_cat, all_reduce_sum, barrier
from util.errors import UserError
from util.io import atomic_write_text
from util.logs import progress_bar
from util.pose import pose_errors

log = logging.getLogger(__name__)

METRIC_COLUMNS = [
    "epoch",
    "loss",
    "pose_loss",
    "scene_nll",
    "median_pos_m",
    "median_ori_deg",
    "scene_acc",
    "lr",
    "s_x",
    "s_q",
    "seconds",
    "images_per_s",
]
TB_KEYS = ("loss", "pose_loss", "median_pos_m", "median_ori_deg", "lr", "s_x", "s_q", "images_per_s")
STREAM_STRIDE = 1_000_003  # seed distance between the random streams of processes / micro-batches


@dataclass
class TrainResult:
    run_dir: Path
    final_checkpoint: Path
    metrics: list[dict]
    model: nn.Module | None = None  # the trained model, unwrapped, on its training device
    trainable: tuple[str, ...] = ()  # names of the parameters this run trained (all but the frozen ones)


@dataclass(frozen=True)
class Runtime:
    """Where and how the steps of a run execute, as :func:`engine.training.train.train` resolved its settings."""

    device: torch.device
    ctx: DistContext = field(default_factory=DistContext)
    amp_dtype: torch.dtype | None = None  # autocast dtype, None without autocast
    compile: bool = False  # wrap the training module in torch.compile
    micro_batches: int = 1


@dataclass(frozen=True)
class RunFolder:
    """The folder a run writes to and the stamp its checkpoint names start with."""

    path: Path
    stamp: str
    resumed_from: Path | None = None  # the checkpoint a run resumed in place from (see OptimizerStateKeeper)


def stream_seed(seed: int, epoch: int, stream: int) -> int:
    """Seed of random stream ``stream`` (process rank x micro-batches + micro-batch) in one epoch;
    stream 0 is :func:`datasets.samplers.epoch_seed`."""
    return epoch_seed(seed, epoch) + STREAM_STRIDE * stream


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


def check_finite(model: nn.Module, loss_fn: nn.Module, epoch: int, probe_img: torch.Tensor) -> None:
    """The divergence check before a checkpoint is written. A step can ruin the model while every loss the
    trainer saw was finite (an exploding lr on the last batch): the weights can turn NaN, or stay finite but
    so large that every prediction overflows. Both are caught: the parameters and buffers are checked, then
    the model predicts a few training images in eval mode, as at test time."""
    bad = non_finite_tensors(model, loss_fn)
    if not bad:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            pose, _ = model(probe_img, None)
        model.train(was_training)
        if not bool(torch.isfinite(pose).all()):
            bad = ["its predictions"]
    if bad:
        raise UserError(
            f"training diverged at epoch {epoch}: {bad[0]}{' and more' if len(bad) > 1 else ''} "
            f"hold NaN or inf after the last step; no checkpoint of this epoch was written; "
            f"try a lower lr"
        )


class OptimizerStateKeeper:
    """``keep_optimizer_state: "last"``: once a checkpoint is written, the one written before it (or the
    one the run resumed from) is rewritten without the optimizer state. The newest checkpoint always keeps
    it, so a run killed at any point resumes exactly."""

    def __init__(self, policy: str, resumed_from: Path | None = None):
        self.policy, self.previous = policy, resumed_from

    def saved(self, path: Path) -> None:
        if self.policy == "last" and self.previous is not None and self.previous != path and self.previous.is_file():
            drop_optimizer_state(self.previous)
            log.debug("dropped the optimizer state of %s", self.previous.name)
        self.previous = path


class TrainingModule(nn.Module):
    """The model and its loss as one module, so that DistributedDataParallel also averages the gradients
    of the learned loss weights."""

    def __init__(self, model: nn.Module, loss_fn: CameraPoseLoss):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, img_B3HW, pose_gt_B7, scene_gt_B):
        # Multi-scene models train with the true scene's head (as in the reference); the others ignore it.
        pose_B7, scene_logp_BS = self.model(img_B3HW, scene_gt_B)
        loss, pose_loss, scene_nll = self.loss_fn.total(pose_B7, pose_gt_B7, scene_logp_BS, scene_gt_B)
        return loss, pose_loss, scene_nll, pose_B7, scene_logp_BS


class Trainer:
    """One training run, phase by phase: built by :func:`engine.training.train.train` from the run's collaborators,
    its folder and its runtime; :meth:`resume` restores a checkpoint's training state, :meth:`fit` trains."""

    def __init__(
        self,
        model_name: str,
        model: nn.Module,
        loss_fn: CameraPoseLoss,
        optimizer,
        scheduler,
        dataset: CameraPoseDataset,
        config: dict,
        folder: RunFolder,
        runtime: Runtime,
    ):
        self.model_name, self.model, self.loss_fn = model_name, model, loss_fn
        self.optimizer, self.scheduler, self.dataset, self.config = optimizer, scheduler, dataset, config
        self.folder, self.runtime = folder, runtime
        self.run_dir, self.stamp = folder.path, folder.stamp
        self.device, self.ctx = runtime.device, runtime.ctx
        self.amp_dtype, self.micro_batches = runtime.amp_dtype, runtime.micro_batches
        device, ctx = self.device, self.ctx
        spec = get_spec(model_name)
        self.multi, self.setting = spec.multi_scene, spec.setting
        module = TrainingModule(model, loss_fn)
        self.ddp = None
        if ctx.enabled:
            # The backbone's ImageNet classifier (and, with some reductions, late blocks) never gets a gradient.
            module = self.ddp = DistributedDataParallel(
                module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
            )
        self.module = torch.compile(module) if runtime.compile else module
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)
        self.streams: RandomStreams | None = None
        self.sampler: EpochSampler | None = None
        self.keeper = OptimizerStateKeeper(config["keep_optimizer_state"], folder.resumed_from)
        self.trainable = tuple(n for n, p in model.named_parameters() if p.requires_grad)

    # Resume ----------------------------------------------------------------------------------------------
    def resume(self, ckpt: dict, source: str | Path) -> int:
        """Restore the training state of checkpoint ``ckpt`` (read from ``source``): weights, loss weights,
        optimizer and scheduler; returns the epoch it ended, from which :meth:`fit` goes on. Every process
        loads the same checkpoint, so the replicas stay equal under DistributedDataParallel."""
        load_model_weights(self.model, ckpt["model"], source)
        self.loss_fn.load_state_dict(ckpt["loss"])
        if ckpt["optimizer"]:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        else:
            log.warning(
                "%s holds no optimizer state (with keep_optimizer_state 'last' only the latest "
                "checkpoint of a run does): Adam restarts with zero moments, so the run will not end "
                "as an uninterrupted one would",
                Path(source).name,
            )
        self.scheduler.load_state_dict(ckpt["scheduler"])
        return int(ckpt["epoch"])

    # Build the loader ------------------------------------------------------------------------------------
    def make_loader(self, workers: int | None = None) -> DataLoader:
        """One loader for the whole run: workers persist across epochs, the sampler sets each epoch's order.
        ``workers``: that many, as they are (benchmarks); by default ``n_workers`` as
        :func:`util.device.cap_workers` caps it for the device."""
        c = self.config
        self.sampler = EpochSampler(
            self.dataset.scene_ids,
            c["seed"],
            c["batch_size"],
            equalize_scenes=self.multi and bool(c.get("equalize_scenes")),
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
        )
        workers = cap_workers(c["n_workers"], self.device) if workers is None else workers
        return DataLoader(
            SeededSamples(self.dataset),
            batch_size=c["batch_size"],
            sampler=self.sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(c["seed"]),
        )

    # Run one epoch ---------------------------------------------------------------------------------------
    def run_epoch(self, loader: DataLoader, epoch: int) -> dict:
        """Train one epoch; returns its metrics row (over all processes)."""
        c, k = self.config, self.micro_batches
        self.sampler.set_epoch(epoch)
        streams = [self.ctx.rank * k + i for i in range(k)]
        seed_everything(stream_seed(c["seed"], epoch, streams[0]))
        self.streams = (
            RandomStreams([stream_seed(c["seed"], epoch, s) for s in streams], self.device) if k > 1 else None
        )
        self.model.train()
        sums = np.zeros(5)  # loss, pose_loss, scene_nll (each x images), correct scenes, images
        pos_errs, ori_errs = [], []
        t0 = time.perf_counter()
        bar = progress_bar(
            loader, desc=f"epoch {epoch}/{c['n_epochs']}", leave=False, dynamic_ncols=True, enabled=self.ctx.is_main
        )
        for step, batch in enumerate(bar, 1):
            stats, pos_err, ori_err = self.step(batch, epoch, step)
            sums += stats
            pos_errs.append(pos_err.cpu())
            ori_errs.append(ori_err.cpu())
            bar.set_postfix(
                loss=f"{sums[0] / sums[4]:.3f}", pos=f"{pos_err.median():.2f}m", ori=f"{ori_err.median():.1f}deg"
            )
            if step % c["n_freq_print"] == 0:
                log.debug(
                    "epoch %d batch %d/%d loss %.4f pos %.3f m ori %.2f deg",
                    epoch,
                    step,
                    len(loader),
                    stats[0] / stats[4],
                    pos_err.median(),
                    ori_err.median(),
                )
        bar.close()
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this epoch trained with, before the schedule moves on
        self.scheduler.step()
        seconds = time.perf_counter() - t0
        loss, pose_loss, scene_nll, correct, n = all_reduce_sum(self.ctx, sums.tolist(), self.device)
        pos_all = all_gather_cat(self.ctx, torch.cat(pos_errs), self.device)
        ori_all = all_gather_cat(self.ctx, torch.cat(ori_errs), self.device)
        return {
            "epoch": epoch,
            "loss": loss / n,
            "pose_loss": pose_loss / n,
            "scene_nll": scene_nll / n if self.multi else "",
            "median_pos_m": float(pos_all.median()),
            "median_ori_deg": float(ori_all.median()),
            "scene_acc": correct / n if self.multi else "",
            "lr": lr,
            "s_x": self.loss_fn.s_x.item(),
            "s_q": self.loss_fn.s_q.item(),
            "seconds": round(seconds, 3),
            "images_per_s": round(n / seconds, 2),
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
                try:
                    loss, pose_loss, scene_nll, pose_pred, scene_logp = self.module(*part)
                except ValueError as e:
                    if "Expected more than 1 value per channel" not in str(e):
                        raise
                    raise UserError(
                        f"epoch {epoch}, batch {step}: a batch part of {part[0].shape[0]} image "
                        f"reaches a BatchNorm layer with 1x1 maps, which needs at least 2; change "
                        f"batch_size or --micro_batches so that no part holds a single image"
                    ) from None
                if not torch.isfinite(loss):
                    raise UserError(
                        f"training diverged at epoch {epoch}, batch {step}: loss is {loss.item()}; try a lower lr"
                    )
                b = part[0].shape[0]
                self.scaler.scale(loss * (b / n)).backward()
            stats += [
                loss.item() * b,
                pose_loss.item() * b,
                scene_nll.item() * b if scene_nll is not None else 0,
                int((scene_logp.argmax(1) == part[2]).sum()) if scene_logp is not None else 0,
                b,
            ]
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
            save_checkpoint(
                path,
                model_name=self.model_name,
                config=self.config,
                scene_map=self.dataset.scene_map,
                model=self.model,
                loss=self.loss_fn,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                epoch=epoch,
                extra={
                    "run_stamp": self.stamp,
                    "world_size": self.ctx.world_size,
                    "micro_batches": self.micro_batches,
                    "trainable": list(self.trainable),
                    # Where the training images are: the baselines of a report (engine.evaluation.retrieval).
                    "train_labels": str(self.dataset.labels_file.resolve()),
                    "train_root": str(self.dataset.dataset_root.resolve()),
                },
            )
            log.info("saved %s", path.name)
            self.keeper.saved(path)
        return path

    def check_before_save(self, probe_loader: DataLoader, epoch: int, checkpoint: bool) -> None:
        """After an epoch: the BatchNorm recalibration before a checkpoint (``bn_recalibrate_batches``, on
        every process alike), then the divergence check of the model as it will be saved, and the eval-mode
        spread line."""
        probe_img = next(iter(probe_loader))["img"][:4].to(self.device, memory_format=torch.channels_last)
        if checkpoint:
            n = recalibrate(self.model, probe_loader, self.config["bn_recalibrate_batches"], self.device)
            if n and self.ctx.is_main:
                log.info("recalibrated the BatchNorm statistics over %d training images", n)
        check_finite(self.model, self.loss_fn, epoch, probe_img)  # the model as it will be saved
        spread = eval_prediction_spread(self.model, probe_loader, self.device)
        if self.ctx.is_main:
            log_spread(epoch, *spread, self.config)

    # The run ---------------------------------------------------------------------------------------------
    def record(self, row: dict, rows: list[dict], writer) -> None:
        """Metrics CSV, TensorBoard and the console line of one epoch (rank 0 only)."""
        rows.append(row)
        write_metrics_csv(self.run_dir / "metrics.csv", rows)
        for key in TB_KEYS + self.setting.training_metrics:
            writer.add_scalar(f"train/{key}", row[key], row["epoch"])
        log.info(
            "epoch %d/%d loss %.4f median %.3f m %.2f deg%s lr %.2e (%.1f images/s)",
            row["epoch"],
            self.config["n_epochs"],
            row["loss"],
            row["median_pos_m"],
            row["median_ori_deg"],
            f" scene acc {row['scene_acc']:.3f}" if self.multi else "",
            row["lr"],
            row["images_per_s"],
        )

    def fit(self, start_epoch: int = 0) -> TrainResult:
        """Epochs ``start_epoch + 1 .. n_epochs``, with periodic and final checkpoints."""
        rows, writer = [], None
        if self.ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter  # slow import, only needed here

            rows = [r for r in read_metrics_csv(self.run_dir / "metrics.csv") if int(r["epoch"]) <= start_epoch]
            writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=start_epoch + 1)
        loader = self.make_loader()
        probe_loader = plain_loader(self.dataset, self.config, self.device)
        n_epochs = self.config["n_epochs"]
        try:
            for epoch in range(start_epoch + 1, n_epochs + 1):
                row = self.run_epoch(loader, epoch)
                if self.ctx.is_main:
                    self.record(row, rows, writer)
                self.check_before_save(
                    probe_loader, epoch, checkpoint=epoch % self.config["n_freq_checkpoint"] == 0 or epoch == n_epochs
                )
                if epoch % self.config["n_freq_checkpoint"] == 0:
                    self.save(f"checkpoint-{epoch}", epoch)
            final = self.save("final", max(self.config["n_epochs"], start_epoch))
        finally:
            del loader  # ends persistent workers
            if writer is not None:
                writer.close()
        barrier(self.ctx)  # nobody leaves before rank 0 has written the final checkpoint
        return TrainResult(
            run_dir=self.run_dir, final_checkpoint=final, metrics=rows, model=self.model, trainable=self.trainable
        )
