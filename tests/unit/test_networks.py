"""QNetwork shapes, padding handling and the item tower."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch

from dql_model import config, networks
from dql_model.config import ModelConfig
from dql_model.networks import QNetwork

torch.set_num_threads(1)
ENCODERS = sorted(networks.ENCODERS)


def tiny(encoder: str = "gru", n_items: int = 12, n_categories: int = 3) -> QNetwork:
    torch.manual_seed(0)
    model = QNetwork(
        n_items, n_categories, ModelConfig(encoder=encoder, embed_dim=8, hidden_dim=8, price_buckets=4)
    )
    model.set_item_features(np.arange(n_items + 1) % (n_categories + 1), np.arange(n_items + 1) % 5)
    return model.eval()


@pytest.mark.parametrize("encoder", ENCODERS)
def test_q_values_shape_and_padding_column(encoder):
    model = tiny(encoder)
    items = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4], [0, 0, 0, 0]])
    events = (items > 0).long()
    q = model.q_values(items, events)
    assert q.shape == (3, 13)
    assert torch.isneginf(q[:, 0]).all()
    assert torch.isfinite(q[:, 1:]).all()
    # embed_dim 8, plus 8 of the state memory (on by default)
    assert model.encode_state(items, events).shape == (3, 16)
    assert model.item_vectors().shape == (13, 16)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_left_padding_does_not_change_the_state(encoder):
    """The same interactions padded to L=3 and L=7 must encode identically (padding is ignored)."""
    model = tiny(encoder)
    short = torch.tensor([[0, 5, 6], [7, 8, 9]])
    long = torch.cat([torch.zeros(2, 4, dtype=torch.long), short], dim=1)
    events = torch.tensor([[0, 1, 3], [1, 2, 1]])
    long_events = torch.cat([torch.zeros(2, 4, dtype=torch.long), events], dim=1)
    torch.testing.assert_close(model.encode_state(short, events), model.encode_state(long, long_events))
    # ...while the order of the interactions matters
    swapped = torch.tensor([[0, 6, 5], [7, 8, 9]])
    assert not torch.allclose(model.encode_state(short, events)[0], model.encode_state(swapped, events)[0])


@pytest.mark.parametrize("encoder", ENCODERS)
def test_empty_state_uses_the_learned_empty_vector(encoder):
    model = tiny(encoder)
    with torch.no_grad():
        model.empty_state.copy_(torch.arange(8.0))
    state = model.encode_state(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long))
    torch.testing.assert_close(state[:, :8], torch.arange(8.0).expand(2, 8))
    torch.testing.assert_close(state[:, 8:], torch.zeros(2, 8))  # nothing to recall


def test_item_tower_uses_category_and_price():
    model = tiny()
    before = model.item_vectors().detach()
    category = model.item_category.clone()
    category[4] = (category[4] + 1) % 4
    model.set_item_features(category, model.item_price_bucket)
    after = model.item_vectors().detach()
    changed = (before - after).abs().sum(1) > 0
    assert changed.tolist() == [i == 4 for i in range(13)]


def test_q_is_state_dot_item_plus_bias():
    model = tiny()
    with torch.no_grad():
        model.item_bias.weight.normal_()
    items, events = torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 1]])
    expected = model.encode_state(items, events) @ model.item_vectors().T + model.item_bias.weight[:, 0]
    torch.testing.assert_close(model.q_values(items, events)[:, 1:], expected[:, 1:])


def test_every_configurable_encoder_is_registered_and_no_other():
    assert set(networks.ENCODERS) == set(typing.get_args(config.Encoder))


def test_unknown_encoder_is_refused_by_the_config():
    with pytest.raises(config.ConfigError, match="model.encoder='transformer'"):
        ModelConfig(encoder="transformer")


@pytest.mark.parametrize("encoder", ENCODERS)
def test_encoders_share_one_forward_signature_and_handle_empty_rows(encoder):
    """Encoder(input_dim, hidden_dim, cfg)(x [B, L, D], lengths [B]) -> [B, H], finite for length 0."""
    torch.manual_seed(0)
    module = networks.ENCODERS[encoder](6, 8, ModelConfig(dropout=0.0)).eval()
    x = torch.randn(3, 4, 6)
    out = module(x, torch.tensor([0, 2, 4]))
    assert out.shape == (3, 8) and torch.isfinite(out).all()
    # only the valid trailing positions count: the padding can hold anything
    x_noisy = x.clone()
    x_noisy[1, :2] = torch.randn(2, 6)
    torch.testing.assert_close(module(x_noisy, torch.tensor([0, 2, 4]))[1:], out[1:])


def test_subset_item_vectors_and_q_of_items_agree_with_the_full_catalogue():
    model = tiny()
    with torch.no_grad():
        model.item_bias.weight.normal_()
    items, events = torch.tensor([[0, 1, 2], [3, 4, 5]]), torch.tensor([[0, 1, 1], [1, 2, 3]])
    state = model.encode_state(items, events)
    full = model.q_values(items, events)
    candidates = torch.tensor([7, 2, 11])
    torch.testing.assert_close(model.item_vectors(candidates), model.item_vectors()[candidates])
    torch.testing.assert_close(model.q_of_items(state, candidates), full[:, candidates])
    torch.testing.assert_close(model.q_of_pairs(state, torch.tensor([9, 4])), full[[0, 1], [9, 4]])


def test_state_memory_recalls_the_latest_items_through_their_memory_embedding():
    torch.manual_seed(0)
    cfg = ModelConfig(embed_dim=8, hidden_dim=8, price_buckets=4, dropout=0.0, state_memory=2)
    model = QNetwork(12, 3, cfg).eval()
    plain = QNetwork(12, 3, cfg.__class__(**{**cfg.__dict__, "state_memory": 0})).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("memory_")})
    items, events = torch.tensor([[5, 6, 7], [0, 0, 0]]), torch.tensor([[1, 1, 2], [0, 0, 0]])
    m = model.memory_embedding.weight
    # g(a) = [tower(a), m(a)]; f(s) = [encoder part, recalled part], zero at first (w starts at 0)
    torch.testing.assert_close(model.item_vectors(), torch.cat([plain.item_vectors(), m], dim=1))
    state = model.encode_state(items, events)
    torch.testing.assert_close(state[:, :8], plain.encode_state(items, events))
    torch.testing.assert_close(state[0, 8:], torch.zeros(8))
    with torch.no_grad():
        model.memory_weight[0, 2] = 3.0  # the latest item when it was an add-to-cart
        model.memory_weight[1, 1] = -1.0  # the one before, a view
        model.memory_weight[0, 1] = 100.0  # (a view as the latest item: not the case here)
    scale = networks.MEMORY_SCALE
    expected = scale * (3.0 * m[7] - 1.0 * m[6])  # item 5 is beyond k=2
    torch.testing.assert_close(model.encode_state(items, events)[0, 8:], expected)
    empty = model.encode_state(items, events)[1]
    torch.testing.assert_close(empty, torch.cat([model.empty_state, torch.zeros(8)]))  # empty stays empty
    # Q is still <f(s), g(a)> + b(a), so scoring stays one matrix product
    q = model.q_values(items, events)
    torch.testing.assert_close(q[:, 1:], (model.encode_state(items, events) @ model.item_vectors().T)[:, 1:])
    assert "memory_weight" not in dict(plain.named_parameters())
