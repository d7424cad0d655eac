import os

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# One thread: the tests use tiny models, where a second thread buys little, and one thread is
# immune to oversubscription when pool or Ray workers run beside the test process.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts on one thread, whatever the one before it set (a CLI `--threads`, say)."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture
def store_dir(tmp_path, monkeypatch):
    path = tmp_path / "store"
    monkeypatch.setenv("PETRIDISH_STORE", str(path))
    return path
