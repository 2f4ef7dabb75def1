"""Scene-balanced sampling for multi-scene training (the recipe's ``equalize_scenes``)."""
from __future__ import annotations

from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Sampler


class SceneBalancedSampler(Sampler[int]):
    """Each epoch, ``num_samples`` dataset indices in which every scene appears equally often (within 1).

    Per epoch, each scene gets ``num_samples // S`` draws and a random ``num_samples % S`` scenes get one
    more. Within a scene, frames are drawn without replacement, cycling through fresh permutations when a
    scene has fewer frames than draws, so small scenes are repeated and large ones subsampled. The epoch's
    indices are then shuffled. Deterministic given ``generator``; without one, each epoch seeds itself from
    the global torch RNG, as ``torch.utils.data.RandomSampler`` does.
    """

    def __init__(self, scene_ids: Union[Sequence[int], np.ndarray, torch.Tensor], num_samples: Optional[int] = None,
                 generator: Optional[torch.Generator] = None):
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
        indices = torch.cat([self._draw(frames, int(n), generator)
                             for frames, n in zip(self.frames_by_scene, draws_S) if n > 0])
        indices = indices[torch.randperm(len(indices), generator=generator)]
        return iter(indices.tolist())
