"""QNetwork shapes, padding handling and the item tower."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch

from dql_model import config
from dql_model.config import ModelConfig
from dql_model.learning import networks
from dql_model.learning.networks import QNetwork

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


def cold_ready(state_memory: int = 20, id_dropout: float = 0.0) -> QNetwork:
    """A small network with random biases and unknown-item vector, so replacing them shows."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        embed_dim=8, hidden_dim=8, price_buckets=4, dropout=0.0, state_memory=state_memory, id_dropout=id_dropout
    )
    model = QNetwork(12, 3, cfg)
    model.set_item_features(np.arange(13) % 4, np.arange(13) % 5)
    with torch.no_grad():
        model.item_bias.weight.normal_()
        model.unknown_item.normal_(std=0.1)
    return model.eval()


STATES = torch.tensor([[0, 1, 2], [3, 4, 6]])  # no cold item in them: the states stay as they were


def test_the_cold_mask_changes_the_scores_of_exactly_the_cold_items():
    model = cold_ready()
    events = (STATES > 0).long()
    before = model.q_values(STATES, events).detach()
    cold = np.zeros(13, dtype=bool)
    cold[[5, 9]] = True
    model.set_cold_items(cold)
    after = model.q_values(STATES, events).detach()
    changed = ((before - after).abs() > 0).any(0)
    assert changed.tolist() == [i in (5, 9) for i in range(13)]
    # a cold item's bias is the mean bias of the warm items of its category
    category = model.item_category
    warm_same = (category == category[5]) & ~model.cold_item & (torch.arange(13) > 0)
    expected = model.item_bias.weight[warm_same, 0].mean()
    torch.testing.assert_close(model.item_biases()[5], expected)


def test_two_cold_items_with_the_same_category_and_price_get_the_same_score():
    model = cold_ready(state_memory=0)
    features = model.item_category.clone(), model.item_price_bucket.clone()
    features[0][8], features[1][8] = features[0][3], features[1][3]  # items 3 and 8 look alike
    model.set_item_features(*features)
    events = (STATES > 0).long()
    warm = model.q_values(STATES, events).detach()
    assert not torch.allclose(warm[:, 3], warm[:, 8])  # their ids and biases tell them apart...
    cold = np.zeros(13, dtype=bool)
    cold[[3, 8]] = True
    model.set_cold_items(cold)
    q = model.q_values(STATES[:, 1:] % 3, events[:, 1:]).detach()  # states without items 3 and 8
    torch.testing.assert_close(q[:, 3], q[:, 8], rtol=0, atol=0)  # ...until they are cold
    # with the state memory, only its m(a) (recall of the user's own items) still differs
    memory = cold_ready(state_memory=2)
    memory.set_item_features(*features)
    memory.set_cold_items(cold)
    vectors = memory.item_vectors().detach()
    torch.testing.assert_close(vectors[3, :8], vectors[8, :8], rtol=0, atol=0)
    assert memory.item_biases()[3] == memory.item_biases()[8]


def test_id_dropout_hides_ids_in_train_mode_only():
    model = cold_ready(state_memory=0, id_dropout=0.5)
    eval_vectors, eval_biases = model.item_vectors().detach(), model.item_biases().detach()
    model.draw_id_dropout()  # eval mode: nothing is drawn, nothing hidden
    assert not model.id_dropped.any()
    torch.testing.assert_close(model.item_vectors(), eval_vectors, rtol=0, atol=0)

    model.train()
    torch.manual_seed(1)
    model.draw_id_dropout()
    dropped = model.id_dropped.clone()
    assert 0 < dropped.sum() < 12 and not dropped[0]
    vectors = model.item_vectors().detach()
    changed = (vectors - eval_vectors).abs().sum(1) > 0
    assert changed.tolist() == dropped.tolist()
    # a hidden item is scored as if it were cold: vectors and biases alike
    reference = cold_ready(state_memory=0).eval()
    reference.set_cold_items(dropped.numpy())
    torch.testing.assert_close(vectors, reference.item_vectors().detach())
    torch.testing.assert_close(model.item_biases().detach(), reference.item_biases().detach())
    # every path of the step sees the same draw: the subset forms and the state's input
    subset = torch.tensor([int(i) for i in dropped.nonzero()[:2, 0]] + [0])
    torch.testing.assert_close(model.item_vectors(subset), model.item_vectors()[subset])
    torch.testing.assert_close(model.item_biases(subset), model.item_biases()[subset])
    first, second = (int(i) for i in dropped.nonzero()[:2, 0])
    one, other = torch.tensor([[0, 1, first]]), torch.tensor([[0, 1, second]])
    events = torch.tensor([[0, 1, 1]])
    torch.testing.assert_close(model.encode_state(one, events), model.encode_state(other, events))
    seq_one, seq_other = torch.tensor([[1, first]]), torch.tensor([[1, second]])
    torch.testing.assert_close(
        model.encode_sequences(seq_one, events[:, 1:])[0], model.encode_sequences(seq_other, events[:, 1:])[0]
    )

    model.eval()  # back in eval mode the draw is ignored
    torch.testing.assert_close(model.item_vectors().detach(), eval_vectors, rtol=0, atol=0)
    torch.testing.assert_close(model.item_biases().detach(), eval_biases, rtol=0, atol=0)


def test_id_dropout_outside_zero_to_one_is_refused():
    with pytest.raises(config.ConfigError, match="model.id_dropout=1.0"):
        ModelConfig(id_dropout=1.0)


def test_a_state_dict_saved_before_the_cold_mask_loads_and_scores_as_before():
    model = cold_ready()
    old = {k: v for k, v in model.state_dict().items() if k not in networks.ADDED_STATE}
    with torch.no_grad():
        model.unknown_item.zero_()  # what the old model had in effect: no cold items, no unknown vector
    loaded = cold_ready()
    loaded.set_cold_items(np.arange(13) % 2 == 1)
    loaded.load_state_dict(old)
    assert not loaded.cold_item.any() and not loaded.unknown_item.any()
    events = (STATES > 0).long()
    torch.testing.assert_close(loaded.q_values(STATES, events), model.q_values(STATES, events), rtol=0, atol=0)
