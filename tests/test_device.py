"""Device choice: auto falls back to the CPU, and impossible requests are one-line user errors."""

import logging

import pytest
import torch

from util.device import RandomStreams, autocast_dtype, select_device
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


def test_autocast_dtype_of_each_amp_setting_on_the_cpu():
    cpu = torch.device("cpu")
    assert autocast_dtype(None, cpu) is None and autocast_dtype(False, cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    assert autocast_dtype("auto", cpu) is torch.bfloat16 and autocast_dtype(True, cpu) is torch.bfloat16
    with pytest.raises(UserError, match="fp16.*CUDA"):
        autocast_dtype("fp16", cpu)
    with pytest.raises(UserError, match="expected one of"):
        autocast_dtype("fp8", cpu)


def test_random_streams_are_separate_and_restore_the_outer_stream():
    streams = RandomStreams([1, 2], torch.device("cpu"))
    torch.manual_seed(0)
    outer = torch.get_rng_state()
    with streams.use(0):
        a1 = torch.rand(3)
    with streams.use(1):
        b1 = torch.rand(3)
    with streams.use(0):
        a2 = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), outer)
    torch.manual_seed(1)
    assert torch.equal(a1, torch.rand(3)) and torch.equal(a2, torch.rand(3))  # stream 0 continues
    torch.manual_seed(2)
    assert torch.equal(b1, torch.rand(3))


def test_workers_are_capped_at_the_cpu_count_with_one_info_line(caplog):
    from util.device import cap_workers, cpu_count

    n = cpu_count()
    with caplog.at_level(logging.INFO, logger="util.device"):
        assert cap_workers(n + 7) == n and cap_workers(n + 7) == n
        assert cap_workers(0) == 0 and cap_workers(n) == n
    assert [r.getMessage() for r in caplog.records] == [f"n_workers {n + 7} capped at the {n} CPUs of this machine"]


def test_a_cpu_model_gets_only_the_workers_its_torch_threads_leave_cpus_for(caplog, monkeypatch):
    import util.device

    threads = torch.get_num_threads()
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(util.device, "cpu_count", lambda: threads)
    with caplog.at_level(logging.INFO, logger="util.device"):
        assert util.device.cap_workers(5, cpu) == 0 and util.device.cap_workers(5, cpu) == 0
        assert util.device.cap_workers(0, cpu) == 0
        assert util.device.cap_workers(threads, cuda) == threads  # the GPU computes; workers take the CPUs
    assert len(caplog.records) == 1
    assert (
        caplog.records[0]
        .getMessage()
        .startswith(
            f"n_workers 5 capped at the CPUs left free by the {threads} "
            f"torch threads on {threads} CPUs (images load in the training"
        )
    )
    monkeypatch.setattr(util.device, "cpu_count", lambda: threads + 1)
    assert util.device.cap_workers(5, cpu) == 1 and util.device.cap_workers(1, cpu) == 1
    # Two processes of a torchrun node share its CPUs: 2 x threads run torch, 4 are left, 2 for each.
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(util.device, "cpu_count", lambda: 2 * threads + 4)
    assert util.device.cap_workers(5, cpu) == 2


def test_a_reference_config_asks_for_more_workers_than_cpus_without_a_warning(scene7, tmp_path, recwarn):
    from conftest import tiny_config_dict, write_config
    from engine.training.train import train
    from util.device import cpu_count

    cfg = tiny_config_dict(n_epochs=1)
    cfg["general"]["n_workers"] = cpu_count() + 2
    train(
        "effposenet",
        "random",
        scene7,
        scene7 / "abs_7scenes_pose.csv_chess_train.csv",
        write_config(tmp_path / "c.json", cfg),
        tmp_path,
        device="cpu",
    )
    assert not [w for w in recwarn if "worker" in str(w.message)], [str(w.message) for w in recwarn]
