import pytest
import torch

from dllm_cache.models.tiny import tiny_dream, tiny_llada

torch.set_num_threads(2)

FACTORIES = {"llada": tiny_llada, "dream": tiny_dream}


@pytest.fixture(params=sorted(FACTORIES))
def family(request) -> str:
    return request.param


@pytest.fixture
def model(family):
    return FACTORIES[family]()
