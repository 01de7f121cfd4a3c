import pytest
import torch

from dllm_cache.models.tiny import tiny_dream, tiny_llada, tiny_llada_moe, tiny_mmada
from tests.helpers import torch_threads

torch.set_num_threads(2)

# Every family the cache supports with its own model class (Dream-Coder / DreamOn use DreamModel,
# LLaDA-1.5 and LLaDA-V's language model use LLaDAModelLM: tests/test_families.py covers those).
FACTORIES = {"llada": tiny_llada, "dream": tiny_dream, "llada_moe": tiny_llada_moe, "mmada": tiny_mmada}


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


@pytest.fixture
def one_thread():
    """One intra-op thread for a test (modules use it with `pytest.mark.usefixtures("one_thread")`)."""
    with torch_threads(1):
        yield
