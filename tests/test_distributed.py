"""Distributed training: 2 CPU processes with gloo on 127.0.0.1 against one process over the same global batch.

One process with ``batch_size`` 2B and ``micro_batches`` 2 sees the same global batches, the same
per-part BatchNorm statistics and the same random streams as 2 processes with ``batch_size`` B, so the
weights must agree up to float rounding: DDP averages the two gradients in another order than the
micro-batch accumulation does. Tolerance: 1e-5 absolute + 1e-4 relative per weight after 2 epochs (6 Adam
steps). BatchNorm running statistics are not compared: under DDP they are rank 0's.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from conftest import REPO, tiny_config_dict, write_config
from engine.training.train import train

pytestmark = pytest.mark.slow  # two-process training runs and a torchrun launch

MODEL = "mshyperpose"
BATCH = 2  # per process
ATOL, RTOL = 1e-5, 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, args: tuple, out_dir: str, device: str = "cpu") -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        GLOO_SOCKET_IFNAME="lo",
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    result = train(*args, device=device)
    torch.save(
        {
            "params": {k: p.detach().cpu().clone() for k, p in result.model.named_parameters()},
            "run_dir": str(result.run_dir),
            "final": str(result.final_checkpoint),
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )


def _config(tmp_path, batch_size: int):
    cfg = tiny_config_dict(n_epochs=2)
    cfg[MODEL].update(batch_size=batch_size, equalize_scenes=True)
    cfg["general"]["keep_optimizer_state"] = "all"  # the resume test starts from checkpoint-1 of a finished run
    return write_config(tmp_path / f"cfg_b{batch_size}.json", cfg)


def _assert_close(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=ATOL, rtol=RTOL, msg=lambda m, k=k: f"{what}: {k}: {m}")


@pytest.fixture(scope="module")
def ddp_run(scenes3, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    labels = scenes3 / "7scenes_all_scenes.csv"
    args = (MODEL, "random", str(scenes3), str(labels), str(_config(tmp, BATCH)), str(tmp / "runs"))
    mp.spawn(_worker, args=(2, _free_port(), args, str(tmp)), nprocs=2, join=True)
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return tmp, labels, ranks


def test_ranks_hold_identical_weights_and_only_rank0_writes(ddp_run):
    tmp, _, ranks = ddp_run
    for k, p in ranks[0]["params"].items():
        assert torch.equal(p, ranks[1]["params"][k]), k
    assert len(list((tmp / "runs").iterdir())) == 1  # one run folder, made by rank 0
    run_dir = (tmp / "runs").iterdir().__next__()
    assert sorted(p.name for p in run_dir.glob("*.pth")) == sorted(
        [f"{run_dir.name}_checkpoint-1.pth", f"{run_dir.name}_checkpoint-2.pth", f"{run_dir.name}_final.pth"]
    )
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 3
    ckpt = torch.load(ranks[0]["final"], weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["model"])  # the unwrapped model
    assert ckpt["extra"]["world_size"] == 2
    for k, p in ranks[0]["params"].items():
        assert torch.equal(ckpt["model"][k], p), k


def test_two_processes_equal_one_process_over_the_same_global_batch(ddp_run, scenes3, tmp_path):
    _, labels, ranks = ddp_run
    single = train(
        MODEL, "random", scenes3, labels, _config(tmp_path, 2 * BATCH), tmp_path / "one", device="cpu", micro_batches=2
    )
    params = {k: p.detach() for k, p in single.model.named_parameters()}
    _assert_close(ranks[0]["params"], params, "1 process x 2 micro-batches vs 2 processes")
    # Without the micro-batches (BatchNorm over the whole global batch) the runs differ: the test can fail.
    whole = train(MODEL, "random", scenes3, labels, _config(tmp_path, 2 * BATCH), tmp_path / "whole", device="cpu")
    diff = max((p.detach() - ranks[0]["params"][k]).abs().max().item() for k, p in whole.model.named_parameters())
    assert diff > 100 * ATOL


def test_resume_a_two_process_run_in_one_process(ddp_run, scenes3, tmp_path):
    tmp, labels, ranks = ddp_run
    run_dir = next((tmp / "runs").iterdir())
    first = tmp_path / run_dir.name / f"{run_dir.name}_checkpoint-1.pth"
    first.parent.mkdir()
    shutil.copy(run_dir / first.name, first)
    resumed = train(
        MODEL,
        "random",
        scenes3,
        labels,
        _config(tmp_path, 2 * BATCH),
        tmp_path / "unused",
        resume=first,
        device="cpu",
        micro_batches=2,
    )
    _assert_close(
        ranks[0]["params"],
        {k: p.detach() for k, p in resumed.model.named_parameters()},
        "resumed in 1 process vs 2 processes",
    )


def test_torchrun_launches_the_training_script(scene7, tmp_path):
    """The documented command: torchrun (torch.distributed.run) with 2 CPU processes on 127.0.0.1, with the
    image cache that local rank 0 builds and rank 1 waits for, and micro-batches (DDP's no_sync)."""
    cfg = tiny_config_dict(n_epochs=1)
    cfg["effposenet"]["batch_size"] = 6  # 12 frames: one global batch of 2 x 6, parts of 3
    config = write_config(tmp_path / "cfg.json", cfg)
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", GLOO_SOCKET_IFNAME="lo", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(REPO / "main_single_scene.py"),
        "effposenet",
        "train",
        "random",
        str(scene7),
        str(scene7 / "abs_7scenes_pose.csv_chess_train.csv"),
        str(config),
        "--output_path",
        str(tmp_path / "runs"),
        "--device",
        "cpu",
        "--cache",
        str(tmp_path / "cache"),
        "--micro_batches",
        "2",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / f"{run_dir.name}_final.pth").is_file()
    assert proc.stdout.count("final checkpoint:") == 2  # both processes report the same path
    assert proc.stderr.count("epoch 1/1 loss") == 1  # only rank 0 logs
    ckpt = torch.load(run_dir / f"{run_dir.name}_final.pth", weights_only=True)
    assert ckpt["extra"]["world_size"] == 2 and ckpt["extra"]["micro_batches"] == 2 and ckpt["epoch"] == 1
    assert len(list((tmp_path / "cache").glob("*.u8cache"))) == 1  # built by local rank 0, read by both
