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


@pytest.fixture
def only_local_tasks(monkeypatch):
    """lm-eval's TaskManager without indexing its thousands of built-in task YAMLs (~8 s)."""
    lm_eval_tasks = pytest.importorskip("lm_eval.tasks")

    class OnlyIncluded(lm_eval_tasks.TaskManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "include_defaults": False})

    monkeypatch.setattr(lm_eval_tasks, "TaskManager", OnlyIncluded)
