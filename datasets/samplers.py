"""Training samplers: scene-balanced sampling (the recipe's ``equalize_scenes``) and the per-epoch order
with per-sample augmentation seeds that single-process and distributed training share."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class SceneBalancedSampler(Sampler[int]):
    """Each epoch, ``num_samples`` dataset indices in which every scene appears equally often (within 1).

    Per epoch, each scene gets ``num_samples // S`` draws and a random ``num_samples % S`` scenes get one
    more. Within a scene, frames are drawn without replacement, cycling through fresh permutations when a
    scene has fewer frames than draws, so small scenes are repeated and large ones subsampled. The epoch's
    indices are then shuffled. Deterministic given ``generator``; without one, each epoch seeds itself from
    the global torch RNG, as ``torch.utils.data.RandomSampler`` does.
    """

    def __init__(
        self,
        scene_ids: Sequence[int] | np.ndarray | torch.Tensor,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
    ):
        scene_ids_N = torch.as_tensor(np.asarray(scene_ids), dtype=torch.long).reshape(-1)
        if scene_ids_N.numel() == 0:
            raise ValueError("SceneBalancedSampler needs at least one scene id")
        self.num_samples = len(scene_ids_N) if num_samples is None else int(num_samples)
        if self.num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {self.num_samples}")
        self.generator = generator
        self.scenes = torch.unique(scene_ids_N)  # sorted
        self.frames_by_scene = [torch.nonzero(scene_ids_N == s).flatten() for s in self.scenes]

    def __len__(self) -> int:
        return self.num_samples

    def _draw(self, frames: torch.Tensor, n_draws: int, generator: torch.Generator) -> torch.Tensor:
        """``n_draws`` of ``frames``: whole permutations, then part of one more."""
        n_perms = -(-n_draws // len(frames))
        order = torch.cat([torch.randperm(len(frames), generator=generator) for _ in range(n_perms)])
        return frames[order[:n_draws]]

    def __iter__(self) -> Iterator[int]:
        generator = self.generator
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        n_scenes = len(self.scenes)
        draws_S = torch.full((n_scenes,), self.num_samples // n_scenes, dtype=torch.long)
        draws_S[torch.randperm(n_scenes, generator=generator)[: self.num_samples % n_scenes]] += 1
        indices = torch.cat(
            [self._draw(frames, int(n), generator) for frames, n in zip(self.frames_by_scene, draws_S) if n > 0]
        )
        indices = indices[torch.randperm(len(indices), generator=generator)]
        return iter(indices.tolist())


def stratified_sample(groups: Sequence, n: int, seed: int) -> list[int]:
    """``n`` indices (at most all) that spread over the groups: each group's members in a random order, the
    groups taken round-robin in a random order, so any ``n`` >= the number of groups holds every group; the
    result is shuffled. Deterministic for ``seed``."""
    generator = torch.Generator().manual_seed(int(seed))
    members: dict = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    queues = [[ids[k] for k in torch.randperm(len(ids), generator=generator).tolist()] for ids in members.values()]
    queues = [queues[k] for k in torch.randperm(len(queues), generator=generator).tolist()]
    order = [q[depth] for depth in range(max(map(len, queues), default=0)) for q in queues if depth < len(q)]
    chosen = order[:n]
    return [chosen[k] for k in torch.randperm(len(chosen), generator=generator).tolist()]


def epoch_length(scene_ids: Sequence[int] | np.ndarray, equalize_scenes: bool) -> int:
    """Samples per epoch: the frame count, or with ``equalize_scenes`` the reference's (largest scene's frame
    count) x (number of scenes), so that every scene is drawn as often as the largest one has frames."""
    scene_ids = np.asarray(scene_ids, dtype=np.int64)
    if not equalize_scenes or len(scene_ids) == 0:
        return len(scene_ids)
    counts = np.unique(scene_ids, return_counts=True)[1]
    return int(counts.max()) * len(counts)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: resuming at any epoch replays the same random stream."""
    return seed * 100_003 + epoch


class EpochSampler(Sampler[tuple[int, int]]):
    """The training order of one epoch for one process: ``(dataset index, sample seed)`` pairs.

    Every epoch draws one global order from the generator seeded by ``epoch_seed(seed, epoch)`` (a random
    permutation, or with ``equalize_scenes`` :class:`SceneBalancedSampler` over :func:`epoch_length` samples) and
    one seed per position, which
    :class:`SeededSamples` uses for that sample's augmentation. The order and the augmentations therefore
    depend only on (seed, epoch), not on the worker count, persistent workers or the world size.

    With ``world_size`` W > 1 the order is padded by wrapping around to a multiple of W, and each global
    batch of ``batch_size`` x W positions is cut into W equal parts, part ``rank`` going to this process:
    the W processes together step through exactly the global batches one process would see with
    ``batch_size`` x W. Call :meth:`set_epoch` before iterating.
    """

    def __init__(
        self,
        scene_ids: Sequence[int] | np.ndarray,
        seed: int,
        batch_size: int,
        equalize_scenes: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.scene_ids = np.asarray(scene_ids, dtype=np.int64)
        self.seed, self.batch_size, self.equalize_scenes = int(seed), int(batch_size), bool(equalize_scenes)
        self.rank, self.world_size = rank, world_size
        self.epoch = 1
        self.epoch_length = epoch_length(self.scene_ids, self.equalize_scenes)
        self.padded = -(-self.epoch_length // world_size) * world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.padded // self.world_size

    def global_order(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, sample seeds) of the whole epoch, before the split across processes."""
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        n = self.epoch_length
        if self.equalize_scenes:
            indices = torch.tensor(list(SceneBalancedSampler(self.scene_ids, n, generator=generator)))
        else:
            indices = torch.randperm(n, generator=generator)
        seeds = torch.randint(0, 2**62, (n,), generator=generator)
        return indices, seeds

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices, seeds = self.global_order()
        if self.padded > len(indices):
            wrap = torch.arange(self.padded - len(indices)) % len(indices)
            indices, seeds = torch.cat([indices, indices[wrap]]), torch.cat([seeds, seeds[wrap]])
        mine = []
        step = self.batch_size * self.world_size
        for start in range(0, self.padded, step):
            part = min(step, self.padded - start) // self.world_size
            mine.append(torch.arange(start + self.rank * part, start + (self.rank + 1) * part))
        positions = torch.cat(mine)
        return iter(zip(indices[positions].tolist(), seeds[positions].tolist()))


class SeededSamples(Dataset):
    """``dataset[i]`` drawn under ``torch.manual_seed(s)`` for a key ``(i, s)`` from :class:`EpochSampler`.

    The global torch RNG is restored afterwards, so loading in the main process (``n_workers`` 0) leaves
    the stream that dropout draws from untouched.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]
