"""Fixtures shared by the test packages."""

import os

import pytest
import torch


def pytest_configure(config):
    """Under pytest-xdist (``make test``: one process per core) each process computes
    on one thread, so that torch's and numba's thread pools do not contend for the
    cores the other processes use."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import numba

        torch.set_num_threads(1)
        numba.set_num_threads(1)


@pytest.fixture
def kill_at(monkeypatch):
    """``kill_at(cls, method, n)`` makes ``cls.method`` raise KeyboardInterrupt on its
    n-th call -- a run killed mid-way -- and returns a function that undoes it."""

    def install(cls, method: str, n: int):
        original, calls = getattr(cls, method), {"n": 0}

        def killed(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, method, killed)
        return lambda: monkeypatch.setattr(cls, method, original)

    return install


@pytest.fixture
def one_thread():
    """torch on one thread for the test (long single-chain runs: no thread start-up
    per small operation), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
