"""pytest plugin for the mutation run (pyproject [tool.mutmut] pytest_add_cli_args): one intra-op thread.

tests/conftest.py asks for 2 threads; on 2 cores shared with other jobs a second thread's
synchronisation made each small matmul of the tiny models ~60x slower (tests/test_oracle_cache.py
measured 4.8 ms vs 0.07 ms). Thread count changes no result the tests check.
"""

import torch


def pytest_runtest_setup(item) -> None:
    torch.set_num_threads(1)
