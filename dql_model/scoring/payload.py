"""``ScoringPayload``: what the Spark engine broadcasts so that every executor can build a ``Ranker``.

Its own module so that an executor unpickling the broadcast imports the ranking core and the
registry's network builder only, not the engines around them. The weights travel as a safetensors
blob (``safetensors.torch.save``) and are rebuilt with ``safetensors.torch.load``: nothing the
executor loads is unpickled model data.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import safetensors.torch
import torch

from dql_model.contract import schema
from dql_model.learning import registry
from dql_model.learning.networks import QNetwork
from dql_model.scoring.policy import Policy
from dql_model.scoring.ranking import Catalogue, Ranker


@dataclass(frozen=True)
class ScoringPayload:
    """Everything an executor needs to build a ``Ranker``: plain values, weights as safetensors bytes."""

    weights: bytes
    """The QNetwork state dict, safetensors-encoded."""
    model: dict[str, Any]
    """n_items, n_categories and the model config section."""
    catalogue: Catalogue
    policy: Policy
    model_version: str
    generated_at: datetime
    max_len: int
    """State length L the user sequences are padded to."""
    source: str = schema.SOURCE_DQN
    """Source of the rows the model ranks (``registry.model_source``)."""
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    """Identifies this payload: an executor builds its Ranker once per payload."""

    @classmethod
    def build(
        cls,
        model: QNetwork,
        catalogue: Catalogue,
        policy: Policy,
        *,
        model_version: str,
        generated_at: datetime,
        max_len: int,
        source: str = schema.SOURCE_DQN,
    ) -> ScoringPayload:
        state = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
        return cls(
            weights=safetensors.torch.save(state),
            model={
                "n_items": model.n_items,
                "n_categories": model.n_categories,
                "config": dataclasses.asdict(model.cfg),
            },
            catalogue=catalogue,
            policy=policy,
            model_version=model_version,
            generated_at=generated_at,
            max_len=max_len,
            source=source,
        )

    def load_model(self) -> QNetwork:
        model = registry.build_network(self.model["config"], self.model["n_items"], self.model["n_categories"])
        model.load_state_dict(safetensors.torch.load(self.weights))
        return model.eval()

    def ranker(self, device: torch.device | str = "cpu") -> Ranker:
        return Ranker(
            self.load_model(),
            self.catalogue,
            self.policy,
            model_version=self.model_version,
            generated_at=self.generated_at,
            device=device,
            source=self.source,
        )
