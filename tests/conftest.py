import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Tiny models run faster on one thread, and tests never oversubscribe a shared machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data directory (CI passes ../shared/data through DOMAINLM_DATA)."""
    path = Path(os.environ.get("DOMAINLM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    if not path.exists():
        pytest.skip(f"data directory {path} not found; set DOMAINLM_DATA")
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """family -> a directory holding that family's tiny model (tiny_models, seed 0), saved once a session."""
    from tiny_models import tiny_model

    saved = {}

    def get(family: str) -> Path:
        if family not in saved:
            path = tmp_path_factory.mktemp(f"model-{family}")
            model, tokenizer = tiny_model(family)
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
            saved[family] = path
        return saved[family]

    return get
