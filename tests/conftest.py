"""Fixtures shared by the test packages."""

import pytest


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
