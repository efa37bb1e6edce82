"""The Q-network as a ``Scorer`` (``dql_model.evaluation.evaluate``): Q(s, ·) over the catalogue, so it
is judged by the same code as every baseline."""

from __future__ import annotations

import numpy as np
import torch

from dql_model.learning.networks import QNetwork
from dql_model.warehouse import data


class QNetworkScorer:
    """Q(s, ·) of a QNetwork, in eval mode and without gradients.

    With ``n_items`` larger than the model's (tonight's index grew since it was trained), the
    items it does not know get -inf, so validation events on new items count as misses.

    An evaluation calls ``scores`` once per batch of rows (a few dozen rows on a catalogue of 200k
    items), so the item side, g(·) and b(·) of every item, is computed once and kept while the
    model's weights and head blend stay as they were (each in-place change of a parameter or buffer
    bumps its version counter, so an optimiser step or a ``load_state_dict`` recomputes it).
    """

    def __init__(
        self, model: QNetwork, *, n_items: int | None = None, device: torch.device | str | None = None
    ):
        self.model = model
        self.n_items = model.n_items if n_items is None else n_items
        if self.n_items < model.n_items:
            raise ValueError(f"n_items={self.n_items} is smaller than the model's {model.n_items} items")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self._item_side: tuple[tuple[int, ...], torch.Tensor, torch.Tensor] | None = None

    def _weights_version(self) -> tuple[int, ...]:
        return tuple(t._version for t in (*self.model.parameters(), *self.model.buffers()))

    def item_side(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(g(a) [n_items + 1, D], b(a) [n_items + 1]) of the model as it is now, in eval mode."""
        version = self._weights_version()
        if self._item_side is None or self._item_side[0] != version:
            self._item_side = (version, self.model.item_vectors(), self.model.item_biases())
        return self._item_side[1], self._item_side[2]

    @torch.inference_mode()
    def scores(self, state_items: np.ndarray, state_events: np.ndarray) -> np.ndarray:
        was_training = self.model.training
        self.model.eval()
        try:
            unknown = state_items > self.model.n_items
            if unknown.any():  # new items in the state: drop them, as scoring does
                state_items, state_events = data.left_align(
                    np.where(unknown, 0, state_items), np.where(unknown, 0, state_events)
                )
            items = torch.as_tensor(state_items, dtype=torch.long, device=self.device)
            events = torch.as_tensor(state_events, dtype=torch.long, device=self.device)
            vectors, biases = self.item_side()
            q = self.model.q_from_state(self.model.encode_state(items, events), vectors, biases)
            q = q.float().cpu().numpy()
        finally:
            self.model.train(was_training)
        if self.n_items > self.model.n_items:
            q = np.pad(q, ((0, 0), (0, self.n_items - self.model.n_items)), constant_values=-np.inf)
        return q

    __call__ = scores
