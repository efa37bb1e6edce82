"""Training on CUDA through the normal entry (bf16 autocast, prefetch thread); skipped without a GPU.

The model trained on the GPU must register and load back on a CPU-only machine (scoring and
the quality gate may run there) and give the same Q-values there, up to bf16/TF32 rounding.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dql_model.config import Config
from dql_model.learning import registry, train
from tests.factories import make_shop

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
MAX_LEN = 8


def train_tiny(tiny_config: Config, tmp_path: Path, device: str) -> tuple[Config, train.TrainResult]:
    transitions, item_index = make_shop(tmp_path / "shop", n_items=30, n_users=40, steps=12, max_len=MAX_LEN)
    cfg = tiny_config.replace(
        etl={"max_len": MAX_LEN},
        model={"embed_dim": 16, "hidden_dim": 16},
        train={"epochs": 1, "batch_size": 32, "lr": 1e-2, "device": device},
    )
    result = train.train_model(
        cfg, transitions_dir=str(transitions), item_index_dir=str(item_index), progress=lambda _: None
    )
    return cfg, result


def test_trains_on_cuda_and_loads_back_on_cpu(tiny_config, tmp_path):
    cfg, result = train_tiny(tiny_config, tmp_path, "cuda")
    assert result.device.startswith("cuda")
    assert next(result.model.parameters()).is_cuda
    assert len(result.history) == 1 and result.best_metrics  # trained one epoch and evaluated it
    assert all(math.isfinite(value) for value in result.history[0].values()), result.history[0]

    version = registry.save_model(
        result.model, cfg, registry_root=cfg.registry.root, metrics={}, data_window={"run_date": "2026-11-27"}
    )
    loaded, _ = registry.load_model(Path(cfg.registry.root) / version, device="cpu")
    assert not next(loaded.parameters()).is_cuda
    items = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4], [0, 0, 0, 0]])
    events = (items > 0).long()
    with torch.no_grad():
        q_cpu = loaded.q_values(items, events)
        q_cuda = result.model.q_values(items.cuda(), events.cuda()).cpu()
    assert torch.isfinite(q_cpu[:, 1:]).all() and torch.isneginf(q_cpu[:, 0]).all()
    torch.testing.assert_close(q_cpu[:, 1:], q_cuda[:, 1:], atol=1e-2, rtol=1e-2)
