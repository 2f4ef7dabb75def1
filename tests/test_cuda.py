"""The CUDA paths of training: fp16 with gradient scaling, bf16, pinned memory with workers and the cache,
NCCL across 2 GPUs. Skipped without CUDA (the CPU paths are tested in test_train.py and
test_distributed.py); run them on a GPU machine with ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from conftest import tiny_config_dict, write_config
from engine.training.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def chess(root, split):
    return root / f"abs_7scenes_pose.csv_chess_{split}.csv"


def _finite_fp32(ckpt_path) -> None:
    ckpt = torch.load(ckpt_path, weights_only=True)
    for k, v in ckpt["model"].items():
        if v.is_floating_point():
            assert v.dtype == torch.float32 and torch.isfinite(v).all(), k


@pytest.mark.parametrize("amp", ["fp16", "bf16", "auto"])
def test_mixed_precision_trains_on_cuda(amp, scene7, tmp_path):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    cfg = write_config(tmp_path / "cfg.json", tiny_config_dict(n_epochs=1))
    result = train("hyperpose", "random", scene7, chess(scene7, "train"), cfg, tmp_path / "out", device="cuda", amp=amp)
    _finite_fp32(result.final_checkpoint)
    assert next(result.model.parameters()).device.type == "cuda"


def test_pinned_workers_and_the_cache_on_cuda(scenes3, tmp_path):
    cfg = tiny_config_dict(n_epochs=2)
    cfg["general"]["n_workers"] = 2
    result = train(
        "mshyperpose",
        "random",
        scenes3,
        scenes3 / "7scenes_all_scenes.csv",
        write_config(tmp_path / "cfg.json", cfg),
        tmp_path / "out",
        device="cuda",
        cache_dir=tmp_path / "cache",
    )
    _finite_fp32(result.final_checkpoint)
    assert len(list((tmp_path / "cache").glob("*.u8cache"))) == 1


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpus_with_nccl_match_one_gpu_with_two_micro_batches(scenes3, tmp_path):
    from test_distributed import _config, _free_port, _worker

    labels = scenes3 / "7scenes_all_scenes.csv"
    args = ("mshyperpose", "random", str(scenes3), str(labels), str(_config(tmp_path, 2)), str(tmp_path / "runs"))
    mp.spawn(_worker, args=(2, _free_port(), args, str(tmp_path), "cuda"), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for k, p in ranks[0]["params"].items():
        assert torch.equal(p, ranks[1]["params"][k]), k
    single = train(
        "mshyperpose", "random", scenes3, labels, _config(tmp_path, 4), tmp_path / "one", device="cuda", micro_batches=2
    )
    # CUDA kernels are not bit-reproducible across runs: a looser tolerance than on the CPU.
    for k, p in single.model.named_parameters():
        torch.testing.assert_close(p.detach().cpu(), ranks[0]["params"][k].cpu(), atol=1e-3, rtol=1e-2)
