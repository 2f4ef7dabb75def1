"""Setting up a training run: config, device and processes, checkpoint to resume or start from, dataset,
model, loss and optimizer; then :class:`engine.training.trainer.Trainer` runs it.

One run lives in ``<output_path>/run_<yy_mm_dd_HH_MM_SS>/``: the resolved config, a log file, ``metrics.csv``,
TensorBoard events, ``run_<stamp>_checkpoint-<epoch>.pth`` every ``n_freq_checkpoint`` epochs and
``run_<stamp>_final.pth``. A run resumed from its newest checkpoint (the one that keeps the optimizer state,
see ``keep_optimizer_state``) ends with the same weights as an uninterrupted one on the CPU, also when it is resumed
with another number of processes and ``micro_batches`` equal to
the processes it replaces (see engine/training/trainer.py).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from datasets.dataset import CameraPoseDataset
from datasets.image_cache import resolve_cache_dir
from datasets.transforms import build_transform
from engine.training.batchnorm import plain_loader, resolve_recalibrate_batches
from engine.training.checkpoints import checkpoint_number
from engine.training.trainer import RunFolder, Runtime, Trainer, TrainResult, read_metrics_csv, write_metrics_csv
from models.backbone import load_backbone
from models.config import load_config
from models.hypernet import hyperfan_from_images
from models.loading import load_checkpoint, load_model, reconcile_config
from models.losses import CameraPoseLoss
from models.registry import build_model, canonical_model_name, get_spec
from util.device import autocast_dtype, make_deterministic, seed_everything
from util.distributed import DistContext, barrier, broadcast_object, init_distributed, shutdown
from util.errors import UserError
from util.io import atomic_write_text, check_output_dir
from util.logs import add_log_file, log_run_failure
from util.pose import mean_pose

log = logging.getLogger(__name__)


def apply_freeze(model: nn.Module, config: dict) -> int:
    """A later stage: with ``freeze``, only parameters whose name contains one of the
    ``freeze_exclude_phrase`` substrings stay trainable (as in the reference). A multi-scene model with
    ``freeze_mode`` "reference" also runs its backbone and transformers frozen, in eval mode, as the
    reference's ``forward_transformers`` did, so listed transformer parameters do not train. Returns the
    trainable count."""
    if config["freeze"]:
        phrases = config["freeze_exclude_phrase"]
        if isinstance(phrases, str):
            phrases = [phrases]
        for name, param in model.named_parameters():
            param.requires_grad_(any(p in name for p in phrases))
        listed = {name for name, param in model.named_parameters() if param.requires_grad}
        if config.get("freeze_mode") == "reference":
            model.freeze_body()
            body = sorted(listed - {name for name, param in model.named_parameters() if param.requires_grad})
            if body:
                log.info(
                    "freeze_mode 'reference': %d listed parameter tensors of the frozen backbone and "
                    "transformers do not train (e.g. %s); 'train_listed' trains them",
                    len(body),
                    body[0],
                )
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if n == 0:
            raise UserError(f"freeze is on but no trainable parameter name contains any of {phrases}")
        log.info("freeze: training %d parameters whose names contain one of %s", n, phrases)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def hyperfan_start(model: nn.Module, probe_loader, device: torch.device) -> None:
    """``head_init`` "hyperfan" on a fresh run: redraw the generators with the generator inputs of a fixed
    sample of training images (:func:`models.hypernet.hyperfan_from_images`). The forward runs in train
    mode, as the first step will, but leaves the BatchNorm statistics and the random streams untouched."""
    buffers = {name: buf.clone() for name, buf in model.named_buffers()}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        img = next(iter(probe_loader))["img"].to(device, memory_format=torch.channels_last)
        n = hyperfan_from_images(model, img, train_mode=True)
    for name, buf in model.named_buffers():
        buf.copy_(buffers[name])
    log.info("head_init 'hyperfan': %d generated head(s) scaled on %d training images", n, img.shape[0])


def build_optimizer(model: nn.Module, loss_fn: nn.Module, config: dict) -> torch.optim.Optimizer:
    """Adam over the trainable model parameters (weight-decayed) and the loss weights (not decayed), with the
    fused kernel: one pass over all parameters instead of a loop over tensors (``bench/bench_multi_scene.py``
    prints the optimizer step's share of a training step)."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": config["weight_decay"]}]
    loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
    if loss_params:
        groups.append({"params": loss_params, "weight_decay": 0.0})
    return torch.optim.Adam(groups, lr=config["lr"], eps=config["eps"], fused=True)


def new_run_dir(output_path: str | Path) -> tuple[Path, str]:
    """A fresh ``run_<yy_mm_dd_HH_MM_SS>`` folder (suffixed ``_1``, ``_2``, ... if two runs start in the
    same second). ``mkdir`` either creates the folder or fails, so two processes never share one."""
    base = "run_" + datetime.now().strftime("%y_%m_%d_%H_%M_%S")
    Path(output_path).mkdir(parents=True, exist_ok=True)
    for k in range(10_000):
        stamp = base if k == 0 else f"{base}_{k}"
        try:
            (Path(output_path) / stamp).mkdir()
        except FileExistsError:
            continue
        return Path(output_path) / stamp, stamp
    raise UserError(f"{output_path}: 10000 runs already started in the second {base}")


def prepare_model(model_name: str, backbone_path: str, config: dict, device: torch.device) -> nn.Module:
    backbone = load_backbone(backbone_path, config["backbone_type"])
    # channels_last trains EfficientNet faster on the CPU (compare `bench/bench_single_scene.py
    # --memory-format contiguous`) and is the layout tensor cores want on CUDA.
    return build_model(model_name, config, backbone).to(device, memory_format=torch.channels_last)


@dataclass(frozen=True)
class RunSettings:
    """The runtime choices of one :func:`train` call, beside its config: where the run goes and what it
    starts from, and how it runs (device, autocast, compile, micro-batches, epoch count and image cache)."""

    output_path: str | Path | None = None
    resume: str | Path | None = None
    init_checkpoint: str | Path | None = None
    device: str = "auto"
    amp: bool | str = False
    n_epochs: int | None = None
    cache_dir: str | Path | None = None
    compile: bool = False
    micro_batches: int = 1

    @property
    def branch(self) -> bool:
        """A resumed run continues in a new run folder under another ``output_path``."""
        return (
            bool(self.resume)
            and self.output_path is not None
            and Path(self.output_path).resolve() != Path(self.resume).resolve().parent.parent
        )

    @property
    def destination(self) -> str | Path:
        """Where a new run folder goes."""
        return self.output_path if self.output_path is not None else "./models"

    @property
    def resumes_in_place(self) -> bool:
        return bool(self.resume) and not self.branch

    def check_destination(self) -> None:
        """The output folder first: a read-only or mistyped --output_path must not cost a training run."""
        if self.resume and not Path(self.resume).is_file():
            load_checkpoint(self.resume)  # one line saying what is missing, before any folder is made
        if not self.resume or self.branch:
            check_output_dir(self.destination)
        elif Path(self.resume).is_file():  # a missing file is reported by load_checkpoint, below
            check_output_dir(Path(self.resume).resolve().parent, "the run folder of --resume")

    def apply_to(self, config: dict) -> dict:
        """The settings that override the config (``n_epochs``, ``cache_dir``), checked against it."""
        if self.n_epochs is not None:
            if self.n_epochs < 1:
                raise UserError(f"--n_epochs must be >= 1, got {self.n_epochs}")
            config["n_epochs"] = self.n_epochs
        if self.micro_batches < 1 or self.micro_batches > config["batch_size"]:
            raise UserError(
                f"--micro_batches must be in 1..batch_size ({config['batch_size']}), got {self.micro_batches}"
            )
        if self.cache_dir:
            config["cache_dir"] = str(self.cache_dir)
        return config

    def sources(self) -> tuple[dict | None, dict | None]:
        """(checkpoint to resume, checkpoint to initialise from), each read once."""
        resume, init_checkpoint = self.resume, self.init_checkpoint
        if resume and init_checkpoint:
            raise UserError("use either --resume (continue a run) or --checkpoint_path (start from its weights)")
        ckpt = load_checkpoint(resume) if resume else None
        if ckpt is not None and ckpt.get("format") == "reference":
            raise UserError(
                f"--resume {resume}: a bare reference state_dict holds no training state; "
                f"resume needs a checkpoint written by this toolkit"
            )
        return ckpt, load_checkpoint(init_checkpoint) if init_checkpoint else None


def refuse_overwrite(resume: Path, epoch: int) -> None:
    """Resuming in place from a checkpoint older than the run's newest would overwrite the newer ones (and
    strip the only one that keeps Adam's state): one line naming them. Newer means a higher epoch in the
    name, or a final checkpoint other than ``resume``; file times say nothing (stripping rewrites old files)."""
    run_dir = resume.resolve().parent
    newer = sorted(
        (n, p.name) for p in run_dir.glob("*_checkpoint-*.pth") if (n := checkpoint_number(p)) is not None and n > epoch
    )
    newer += [(math.inf, p.name) for p in sorted(run_dir.glob("*_final.pth")) if p.resolve() != resume.resolve()]
    if newer:
        names = ", ".join(name for _, name in newer[:3]) + (", ..." if len(newer) > 3 else "")
        raise UserError(
            f"--resume {resume.name} (epoch {epoch}): {run_dir} already holds later checkpoints "
            f"({names}) that resuming here would overwrite; resume from the newest, or pass "
            f"--output_path DIR to continue in a new run folder there"
        )


def remove_stale_temp_files(run_dir: Path) -> None:
    """Half-written temporary files that a killed process left in a run folder (util.io's ``.<name>.*.tmp``)."""
    stale = [p for p in run_dir.glob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info(
            "removed %d half-written temporary file(s) of an earlier, interrupted write in %s", len(stale), run_dir
        )


def copy_metrics(old_run: Path, new_run: Path, epoch: int) -> None:
    """A branched run starts with the metrics of the epochs it inherits."""
    rows = [r for r in read_metrics_csv(old_run / "metrics.csv") if int(r["epoch"]) <= epoch]
    if rows:
        write_metrics_csv(new_run / "metrics.csv", rows)


def _attach_cache(dataset: CameraPoseDataset, config: dict, ctx: DistContext) -> None:
    """The decoded-image cache (``cache_dir``): the first process of each node builds it, the others then
    open it. Cached and decoded samples are equal, so a process without the cache trains the same."""
    cache_dir, required = resolve_cache_dir(config["cache_dir"])
    if cache_dir is None:
        return
    builder = ctx.local_rank == 0
    if builder:
        dataset.use_image_cache(
            cache_dir,
            config["image_resize"],
            config["n_workers"],
            required=required,
            resize_backend=config["resize_backend"],
        )
    barrier(ctx)
    if (
        not builder
        and not dataset.use_image_cache(
            cache_dir, config["image_resize"], build=False, resize_backend=config["resize_backend"]
        )
        and required
    ):
        raise UserError(f"process {ctx.rank} cannot read the image cache in {cache_dir} that local rank 0 built")


def _training_dataset(
    dataset_root: str | Path, labels_file: str | Path, model_name: str, config: dict, source: dict | None, ctx
) -> CameraPoseDataset:
    """The training images, checked and cached, in the scene order of the checkpoint the run starts from;
    a multi-scene model's ``num_scenes`` is set from them."""
    scene_map = source["scene_map"] if source and source["scene_map"] else None
    dataset = CameraPoseDataset(
        dataset_root, labels_file, transform=build_transform(config, train=True), scene_map=scene_map
    )
    dataset.check_sample()  # a broken image fails here, before any run folder exists
    _attach_cache(dataset, config, ctx)
    if get_spec(model_name).multi_scene:
        n_scenes = len(dataset.scene_map)
        if config.get("num_scenes") not in (None, n_scenes):
            raise UserError(
                f"config num_scenes={config['num_scenes']} but {labels_file} has {n_scenes} "
                f"scenes ({', '.join(dataset.scene_map)}); remove num_scenes or set it to {n_scenes}"
            )
        config["num_scenes"] = n_scenes
    return dataset


def _settle_config(
    config: dict, model_name: str, backbone_path: str, settings: RunSettings, ckpt: dict | None, init: dict | None
) -> dict:
    """A resumed run takes its checkpoint's architecture and goes on as it began; then the BatchNorm
    recalibration is resolved."""
    if ckpt is not None:
        config = reconcile_config(ckpt, model_name, config, settings.resume)
    if ckpt is not None and config.get("bn_recalibrate_batches") is None:  # a resumed run goes on as it began
        config["bn_recalibrate_batches"] = ckpt["config"].get("bn_recalibrate_batches")
    config["bn_recalibrate_batches"] = resolve_recalibrate_batches(
        config, random_backbone=backbone_path == "random" and init is None
    )
    return config


def _build_model(
    model_name: str,
    backbone_path: str,
    config: dict,
    dataset: CameraPoseDataset,
    init: dict | None,
    settings: RunSettings,
    dev: torch.device,
) -> tuple[nn.Module, dict]:
    """The seeded model, from ``init_checkpoint``'s architecture keys and weights where given."""
    seed_everything(config["seed"])
    if init is not None:  # the checkpoint's architecture keys and weights; the dataset holds its scene map
        loaded = load_model(
            settings.init_checkpoint,
            model_name,
            config,
            ckpt=init,
            scene_map_for=lambda n_scenes: dataset.scene_map,
            build=lambda cfg: prepare_model(model_name, backbone_path, cfg, dev),
        )
        model, config = loaded.model, loaded.config
        log.info("initialised %s from %s", model_name, settings.init_checkpoint)
    else:
        model = prepare_model(model_name, backbone_path, config, dev)
    if config.get("bn_momentum") is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = config["bn_momentum"]
    return model, config


def _open_run_folder(model_name: str, settings: RunSettings, ckpt: dict | None, ctx: DistContext) -> RunFolder:
    """The run folder: the resumed run's own (which must hold no later checkpoint), a new one branching off
    it with the metrics it inherits, or a new one."""
    if ckpt is None:
        run_dir, stamp = broadcast_object(ctx, new_run_dir(settings.destination) if ctx.is_main else None)
        return RunFolder(run_dir, stamp)
    resume, epoch = Path(settings.resume), int(ckpt["epoch"])
    if settings.resumes_in_place:
        run_dir = resume.resolve().parent
        stamp = ckpt["extra"].get("run_stamp", run_dir.name)
        refuse_overwrite(resume, epoch)
        if ctx.is_main:
            remove_stale_temp_files(run_dir)
        log.info("resuming %s from epoch %d in %s", model_name, epoch, run_dir)
        return RunFolder(run_dir, stamp, resumed_from=resume.resolve())
    run_dir, stamp = broadcast_object(ctx, new_run_dir(settings.destination) if ctx.is_main else None)
    if ctx.is_main:
        copy_metrics(resume.resolve().parent, run_dir, epoch)
    log.info("branching %s off %s at epoch %d into %s", model_name, settings.resume, epoch, run_dir)
    return RunFolder(run_dir, stamp)


def _log_run(
    folder: RunFolder,
    model_name: str,
    model: nn.Module,
    n_trainable: int,
    dataset: CameraPoseDataset,
    config: dict,
    runtime: Runtime,
) -> None:
    log.info(
        "run folder %s; model %s (%d parameters, %d trainable) on %s; %d training frames, %d scenes; "
        "global batch %d (%d process(es) x %d)%s%s",
        folder.path,
        model_name,
        sum(p.numel() for p in model.parameters()),
        n_trainable,
        runtime.device,
        len(dataset),
        len(dataset.scene_map),
        config["batch_size"] * runtime.ctx.world_size,
        runtime.ctx.world_size,
        config["batch_size"],
        f" in {runtime.micro_batches} micro-batches" if runtime.micro_batches > 1 else "",
        f"; autocast {runtime.amp_dtype}" if runtime.amp_dtype is not None else "",
    )


def train(
    model_name: str,
    backbone_path: str,
    dataset_root: str | Path,
    labels_file: str | Path,
    config_path: str | Path,
    output_path: str | Path | None = None,
    *,
    override_config=None,
    resume: str | Path | None = None,
    init_checkpoint: str | Path | None = None,
    device: str = "auto",
    amp=False,
    n_epochs: int | None = None,
    cache_dir: str | Path | None = None,
    compile: bool = False,
    micro_batches: int = 1,
) -> TrainResult:
    """Train ``model_name`` on a label CSV and return the run folder and its final checkpoint.

    ``resume`` continues a run (weights, optimizer, scheduler, epoch), also with another number of
    processes: in its own run folder (``output_path`` None or that folder's parent), which must hold no
    later checkpoint, or, with another ``output_path``, in a new run folder there that branches off it, so
    no existing checkpoint is ever overwritten. A new run goes to ``output_path`` (default ``./models``).
    ``init_checkpoint`` starts a new run from a checkpoint's weights only, ours or the
    reference's, as the reference's ``--checkpoint_path`` did in train mode; the second, ``freeze`` stage
    of the multi-stage recipe uses it. ``amp``: False, ``auto``, ``bf16`` or ``fp16`` (see
    :func:`util.device.autocast_dtype`); ``compile`` wraps the training module in ``torch.compile``.
    The keyword arguments make a :class:`RunSettings` for :func:`train_with`.
    """
    settings = RunSettings(
        output_path=output_path,
        resume=resume,
        init_checkpoint=init_checkpoint,
        device=device,
        amp=amp,
        n_epochs=n_epochs,
        cache_dir=cache_dir,
        compile=compile,
        micro_batches=micro_batches,
    )
    return train_with(
        model_name, backbone_path, dataset_root, labels_file, config_path, settings, override_config=override_config
    )


def train_with(
    model_name: str,
    backbone_path: str,
    dataset_root: str | Path,
    labels_file: str | Path,
    config_path: str | Path,
    settings: RunSettings,
    *,
    override_config=None,
) -> TrainResult:
    """:func:`train` with its runtime choices as one :class:`RunSettings`."""
    model_name = canonical_model_name(model_name)
    settings.check_destination()
    config = settings.apply_to(load_config(config_path, model_name, override_config))
    ckpt, init = settings.sources()
    ctx, dev = init_distributed(settings.device, config.get("device_id"))
    file_handler = None
    try:
        runtime = Runtime(
            dev, ctx, autocast_dtype(settings.amp, dev), compile=settings.compile, micro_batches=settings.micro_batches
        )
        if dev.type == "cpu":  # the promise is a bit-reproducible CPU run; CUDA keeps its fast kernels
            make_deterministic()
        dataset = _training_dataset(dataset_root, labels_file, model_name, config, ckpt or init, ctx)
        config = _settle_config(config, model_name, backbone_path, settings, ckpt, init)
        model, config = _build_model(model_name, backbone_path, config, dataset, init, settings, dev)
        loss_fn = CameraPoseLoss.from_config(config).to(dev)
        n_trainable = apply_freeze(model, config)
        optimizer = build_optimizer(model, loss_fn, config)
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config["lr_scheduler_step_size"], gamma=config["lr_scheduler_gamma"]
        )
        if init is None and ckpt is None and config.get("head_init") == "hyperfan":
            hyperfan_start(model, plain_loader(dataset, config, dev), dev)
        folder = _open_run_folder(model_name, settings, ckpt, ctx)
        if ctx.is_main:
            file_handler = add_log_file(folder.path / "train.log")
            atomic_write_text(folder.path / "config.json", json.dumps(config, indent=2) + "\n")
        _log_run(folder, model_name, model, n_trainable, dataset, config, runtime)
        trainer = Trainer(model_name, model, loss_fn, optimizer, scheduler, dataset, config, folder, runtime)
        start_epoch = trainer.resume(ckpt, settings.resume) if ckpt is not None else 0
        result = trainer.fit(start_epoch)
        log.info("run finished: %s", result.final_checkpoint.name)
        return result
    except BaseException as exc:  # once the folder exists it stays, and its log says why the run ended
        if file_handler is not None:
            log_run_failure(file_handler, exc, __name__)
        raise
    finally:
        if file_handler is not None:
            logging.getLogger().removeHandler(file_handler)
            file_handler.close()
        shutdown(ctx)


def train_mean_pose(dataset: CameraPoseDataset) -> np.ndarray:
    """The mean training pose (mean position, chordal-mean orientation): the baseline any APR must beat."""
    return mean_pose(dataset.poses_N7).astype(np.float32)
