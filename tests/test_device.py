"""Device choice: auto falls back to the CPU, and impossible requests are one-line user errors."""
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
