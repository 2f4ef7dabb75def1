"""Device choice: auto falls back to the CPU, and impossible requests are one-line user errors."""
import logging

import pytest
import torch

from util.device import select_device
from util.errors import UserError


def test_auto_uses_the_cpu_without_cuda_whatever_the_config_says():
    if torch.cuda.is_available():
        assert select_device("auto", "cuda:0") == torch.device("cuda", 0)
    else:
        assert select_device("auto", "cuda:0") == torch.device("cpu")
    assert select_device("auto", "cpu") == torch.device("cpu")
    assert select_device("cpu", "cuda:0") == torch.device("cpu")


@pytest.mark.parametrize("request_", ["gpu", "cuda:x", "tpu:0"])
def test_malformed_device_is_a_user_error(request_):
    with pytest.raises(UserError, match="--device"):
        select_device(request_)


def test_cuda_without_cuda_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(UserError, match="CUDA is not available"):
        select_device("cuda:0")


def test_workers_are_capped_at_the_cpu_count_with_one_info_line(caplog):
    from util.device import cap_workers, cpu_count

    n = cpu_count()
    with caplog.at_level(logging.INFO, logger="util.device"):
        assert cap_workers(n + 7) == n and cap_workers(n + 7) == n
        assert cap_workers(0) == 0 and cap_workers(n) == n
    assert [r.getMessage() for r in caplog.records] == [f"n_workers {n + 7} capped at the {n} CPUs of this machine"]


def test_a_reference_config_asks_for_more_workers_than_cpus_without_a_warning(scene7, tmp_path, recwarn):
    from conftest import tiny_config_dict, write_config
    from engine.train import train
    from util.device import cpu_count

    cfg = tiny_config_dict(n_epochs=1)
    cfg["general"]["n_workers"] = cpu_count() + 2
    train("effposenet", "random", scene7, scene7 / "abs_7scenes_pose.csv_chess_train.csv",
          write_config(tmp_path / "c.json", cfg), tmp_path, device="cpu")
    assert not [w for w in recwarn if "worker" in str(w.message)], [str(w.message) for w in recwarn]
