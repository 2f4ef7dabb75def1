"""BatchNorm running statistics: recalibration before a checkpoint, and a check that eval mode still works.

Trained briefly from a random backbone with a small BatchNorm momentum (EfficientNet's 0.01), the running
statistics lag the weights: in eval mode, which uses them, every prediction can land near one point while
train mode (batch statistics) still tracks the images. Recalibrating recomputes each running mean and
variance as the plain average over N batches of a fixed random sample of the training images (every
sequence of every scene in it), with the test transform, the weights frozen and dropout off, so a
checkpoint's eval mode sees statistics of its own weights.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from datasets.samplers import stratified_sample
from datasets.transforms import build_transform
from util.device import cap_workers

log = logging.getLogger(__name__)

DEFAULT_RANDOM_INIT_BATCHES = 20  # bn_recalibrate_batches null: this for a random backbone at its own momentum
COLLAPSE_RATIO = 0.1  # eval predictions spread less than this fraction of the ground truth: collapsed
SPREAD_BATCHES = 4


def resolve_recalibrate_batches(config: dict, random_backbone: bool) -> int:
    """``bn_recalibrate_batches`` with null resolved: on for a random-init backbone that keeps its own
    BatchNorm momentum (``bn_momentum`` null: EfficientNet's 0.01, the setting where the statistics lag),
    off otherwise. With ``bn_momentum`` 0.1 the statistics keep up, and statistics recomputed without the
    colour jitter then fit a colour-shifted test set worse (measured on the demo: see docs/configs.md)."""
    value = config.get("bn_recalibrate_batches")
    if value is None:
        return DEFAULT_RANDOM_INIT_BATCHES if random_backbone and config.get("bn_momentum") is None else 0
    return int(value)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def plain_loader(dataset, config: dict, device: torch.device) -> DataLoader:
    """A fixed random sample of the training images (drawn from ``seed`` over every (scene, sequence), in
    shuffled order) with the test transform. Unlike the first batches in file order (on 7Scenes the first
    frames of one sequence), it represents every sequence, and it is the same every epoch, so recalibration
    is deterministic and a resumed run stays bit-identical. It holds the batches the recalibration and the
    spread check need."""
    view = copy.copy(dataset)
    view.transform = build_transform(config, train=False)
    n_batches = max(int(config.get("bn_recalibrate_batches") or 0), SPREAD_BATCHES)
    groups = list(zip(dataset.scene_names, dataset.seqs))
    sample = Subset(view, stratified_sample(groups, n_batches * config["batch_size"], config["seed"]))
    return DataLoader(
        sample,
        batch_size=config["batch_size"],
        shuffle=False,
        num_workers=cap_workers(config["n_workers"], device),
        pin_memory=device.type == "cuda",
    )


def _images(loader: DataLoader, n_batches: int, device: torch.device) -> Iterable[torch.Tensor]:
    for i, batch in enumerate(loader):
        if i >= n_batches:
            break
        yield batch["img"].to(device, non_blocking=True, memory_format=torch.channels_last), batch["pose"]


@torch.no_grad()
def recalibrate(model: nn.Module, loader: DataLoader, n_batches: int, device: torch.device) -> int:
    """Recompute the running statistics of every BatchNorm over ``n_batches`` batches; returns how many
    images were used. Weights are untouched; the model's mode and the layers' momenta are restored."""
    layers = batchnorm_layers(model)
    if not layers or n_batches <= 0:
        return 0
    was_training, momenta = model.training, [m.momentum for m in layers]
    model.eval()  # dropout off
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
        m.train()
    n_images = 0
    try:
        for img, _ in _images(loader, n_batches, device):
            model(img, None)
            n_images += img.shape[0]
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)
    return n_images


def _spread(t_N3: torch.Tensor) -> float:
    """Median distance of positions to their mean, metres."""
    return float((t_N3 - t_N3.mean(0)).norm(dim=1).median())


@torch.no_grad()
def eval_prediction_spread(
    model: nn.Module, loader: DataLoader, device: torch.device, n_batches: int = SPREAD_BATCHES
) -> tuple[float, float]:
    """(spread of the eval-mode predicted positions, spread of the true positions) over a few training
    batches; a ratio near 0 means eval mode predicts one point whatever the image."""
    was_training = model.training
    model.eval()
    pred, true = [], []
    for img, pose in _images(loader, n_batches, device):
        pred.append(model(img, None)[0][:, :3].float().cpu())
        true.append(pose[:, :3])
    model.train(was_training)
    return _spread(torch.cat(pred)), _spread(torch.cat(true))


def log_spread(epoch: int, spread_m: float, true_m: float, config: dict | None = None) -> None:
    """One info line per epoch; a warning when the eval-mode predictions have collapsed, with the advice that
    the run's config does not already follow."""
    log.info("epoch %d: eval-mode predictions spread %.3f m (ground truth %.3f m)", epoch, spread_m, true_m)
    if true_m > 0 and spread_m < COLLAPSE_RATIO * true_m:
        config = config or {}
        advice = []
        if not config.get("bn_recalibrate_batches"):
            advice.append("set bn_recalibrate_batches (e.g. 20)")
        if config.get("bn_momentum") is None or config["bn_momentum"] < 0.1:
            advice.append("bn_momentum 0.1")
        hint = (
            " or ".join(advice)
            if advice
            else "early epochs often recover; if the last ones do not, train longer or with a lower lr"
        )
        log.warning(
            "epoch %d: eval-mode predictions have collapsed (spread %.3f m against %.3f m in the "
            "labels): the BatchNorm running statistics lag the weights; %s",
            epoch,
            spread_m,
            true_m,
            hint,
        )
