"""The sampled softmax: equal to the full one on the whole catalogue, log-Q correction by hand, auto
choice by size, a step touching only its items, and the lazy Polyak target equal to the dense one."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from dql_model.config import ModelConfig, TrainConfig
from dql_model.contract import schema
from dql_model.learning import agent as agent_module
from dql_model.learning.agent import (
    Candidates,
    DQNAgent,
    NegativeSampler,
    TensorBatch,
    compute_loss,
    describe_loss,
    loss_items_for,
    sampled_softmax_term,
)
from dql_model.learning.networks import QNetwork
from dql_model.learning.sequences import SequenceBatch
from dql_model.warehouse import data

torch.set_num_threads(1)


def network(n_items: int = 12, seed: int = 0, heads: str = "one") -> QNetwork:
    torch.manual_seed(seed)
    cfg = ModelConfig(embed_dim=8, hidden_dim=8, price_buckets=4, dropout=0.0, state_memory=3, heads=heads)
    model = QNetwork(n_items, 3, cfg)
    model.set_item_features(np.arange(n_items + 1) % 4, np.arange(n_items + 1) % 5)
    return model


def transitions(n_items: int, rows: int = 6, max_len: int = 4, seed: int = 0) -> data.TransitionBatch:
    rng = np.random.default_rng(seed)
    items = rng.integers(0, n_items + 1, size=(rows, max_len))
    events = np.where(items > 0, schema.EVENT_CODE[schema.VIEW], 0)
    batch = data.TransitionBatch.from_state(
        items,
        events,
        rng.integers(1, n_items + 1, rows),
        np.full(rows, schema.EVENT_CODE[schema.VIEW]),
        rng.random(rows).astype(np.float32),
        rng.random(rows) < 0.3,
    )
    batch.later_rewards = rng.random((rows, 1)).astype(np.float32)
    batch.n_steps = rng.integers(1, 3, rows)
    return batch


@pytest.mark.parametrize("mode", ["dqn", "sqn", "supervised"])
def test_the_sampled_loss_over_the_whole_catalogue_uncorrected_is_the_full_loss(mode):
    heads = "two" if mode == "sqn" else "one"
    online, target = network(heads=heads), network(seed=1, heads=heads)
    batch = TensorBatch.from_numpy(transitions(12))
    full_loss, full = compute_loss(batch, online, target, TrainConfig(mode=mode, loss_items="full"))
    sampled_cfg = TrainConfig(mode=mode, loss_items="sampled")
    sampled_loss, sampled = compute_loss(batch, online, target, sampled_cfg, Candidates.whole_catalogue(12))
    assert set(sampled) == set(full)
    for name, value in full.items():
        torch.testing.assert_close(sampled[name], value, msg=name)
    torch.testing.assert_close(sampled_loss, full_loss)
    # the gradients agree too: the sampled step trains what the full one trains
    full_grads = torch.autograd.grad(full_loss, list(online.parameters()), allow_unused=True)
    sampled_grads = torch.autograd.grad(sampled_loss, list(online.parameters()), allow_unused=True)
    for a, b in zip(full_grads, sampled_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


def test_the_sampled_loss_of_sequence_windows_equals_the_full_loss_on_the_whole_catalogue():
    online, target = network(), network(seed=1)
    windows = SequenceBatch(
        items=np.array([[3, 5, 7, 2], [4, 1, 0, 0]]),
        events=np.array([[1, 1, 2, 1], [1, 3, 0, 0]]),
        loss=np.array([[False, True, True, True], [True, True, False, False]]),
        reward=np.array([[0, 0.3, 1.0, 0], [0, 1.0, 0, 0]], np.float32),
        done=np.array([[False, False, False, True], [False, True, False, False]]),
    )
    batch = agent_module.SequenceTensors.from_numpy(windows)
    full = compute_loss(batch, online, target, TrainConfig(n_step=2, loss_items="full"))[0]
    sampled_cfg = TrainConfig(n_step=2, loss_items="sampled")
    torch.testing.assert_close(compute_loss(batch, online, target, sampled_cfg, Candidates.whole_catalogue(12))[0], full)


def test_log_q_correction_by_hand_on_three_items(monkeypatch):
    # training popularity 6 : 3 : 1; a batch of two actions (items 1 and 2) and two uniform draws (3, 1)
    sampler = NegativeSampler(3, negatives=2, popularity=[0, 6, 3, 1])
    monkeypatch.setattr(torch, "randint", lambda low, high, size, device=None: torch.tensor([3, 1]))
    drawn = sampler.draw(torch.tensor([1, 2]))
    assert drawn.items.tolist() == [1, 2, 3]  # distinct: item 1, an action and a draw, counts once
    # expected count in the step's distinct items: 1 - (1 - pop)^2 actions * (1 - 1/3)^2 draws
    included = [1 - 0.4**2 * (2 / 3) ** 2, 1 - 0.7**2 * (2 / 3) ** 2, 1 - 0.9**2 * (2 / 3) ** 2]
    torch.testing.assert_close(torch.tensor(included), torch.tensor([0.928889, 0.782222, 0.64]))
    by_hand = [-math.log(p) for p in included]
    torch.testing.assert_close(drawn.log_weight, torch.tensor(by_hand))
    # the sign: every drawn item stands for itself and the items not drawn (+), the popular one the least
    assert 0 < by_hand[0] < by_hand[1] < by_hand[2]

    # rows with logged actions 1 and 3 and Q-values (2, 1, 0) for items (1, 2, 3)
    q = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]])
    action = torch.tensor([1, 3])
    q_logged = torch.tensor([2.0, 0.0])
    got = sampled_softmax_term(q_logged, q, drawn.items, drawn.log_weight, action)
    # row 0: item 1 is the logged action (an accidental hit in the sample): entered once, uncorrected
    row0 = math.log(math.exp(2.0) + math.exp(1.0 + by_hand[1]) + math.exp(0.0 + by_hand[2])) - 2.0
    row1 = math.log(math.exp(0.0) + math.exp(2.0 + by_hand[0]) + math.exp(1.0 + by_hand[1])) - 0.0
    torch.testing.assert_close(got, torch.tensor([row0, row1]))


def test_without_popularity_only_the_uniform_draws_are_candidates():
    sampler = NegativeSampler(50, negatives=10)
    torch.manual_seed(0)
    drawn = sampler.draw(torch.tensor([7, 7, 8]))
    torch.manual_seed(0)
    items = torch.unique(torch.randint(1, 51, (10,)))
    assert not sampler.in_batch
    assert drawn.items.tolist() == items.tolist()  # the batch's actions have no expected count here
    # each item is among 10 uniform draws of 50 with probability 1 - (49 / 50)^10
    torch.testing.assert_close(drawn.log_weight, torch.full(items.shape, -math.log(1 - 0.98**10)))
    with pytest.raises(ValueError, match="train.cql_negatives=0"):
        NegativeSampler(50, negatives=0)


def test_auto_picks_full_up_to_the_threshold_and_sampled_above():
    cfg = TrainConfig(full_loss_max_items=100, cql_negatives=64)
    assert loss_items_for(cfg, 100) == "full"
    assert loss_items_for(cfg, 101) == "sampled"
    assert loss_items_for(TrainConfig(loss_items="full", full_loss_max_items=100), 10**6) == "full"
    assert loss_items_for(TrainConfig(loss_items="sampled"), 10) == "sampled"
    assert describe_loss(cfg, 100) == "full softmax over 100 items"
    assert describe_loss(cfg, 219000) == (
        "sampled softmax: 64 negatives + the batch's actions of 219000 items, log-Q corrected"
    )
    # the demo shop (1,000 items) keeps the exact full softmax by default
    assert loss_items_for(TrainConfig(), 1000) == "full"

    small = DQNAgent(network(12), TrainConfig(full_loss_max_items=12))
    assert small.sampler is None and isinstance(small.optimizer, torch.optim.Adam)
    large = DQNAgent(network(12), TrainConfig(full_loss_max_items=11, cql_negatives=4), item_counts=np.ones(13))
    assert large.sampler is not None and large.sampler.in_batch
    assert all(table.sparse for table in large.online.item_row_tables())


def test_a_sampled_step_runs_the_item_tower_on_its_items_only_and_updates_only_their_rows():
    n_items = 300
    model = network(n_items)
    agent = DQNAgent(
        model, TrainConfig(loss_items="sampled", cql_negatives=16), item_counts=np.r_[0, np.ones(n_items)]
    )
    batch = TensorBatch.from_numpy(transitions(n_items, rows=8))
    drawn = []
    real_draw = agent.sampler.draw
    agent.sampler.draw = lambda actions: drawn.append(real_draw(actions)) or drawn[-1]
    online_calls, target_calls = [], []
    agent.online.item_tower.register_forward_hook(lambda m, inputs, out: online_calls.append(inputs[0].shape))
    agent.target.item_tower.register_forward_hook(lambda m, inputs, out: target_calls.append(inputs[0].shape))
    before = {table: table.weight.detach().clone() for table in agent.online.item_row_tables()}

    agent.update(batch)

    step_items = torch.unique(torch.cat([drawn[0].items, batch.action]))
    assert online_calls == [torch.Size([len(step_items), 3 * 8])]  # one tower pass over the step's items
    assert target_calls == [torch.Size([8, 3 * 8])]  # the target values one chosen next action per row
    assert len(step_items) < n_items
    read = torch.unique(torch.cat([batch.state_items.flatten(), batch.next_items.flatten(), step_items]))
    untouched = torch.ones(n_items + 1, dtype=torch.bool)
    untouched[read] = False
    for table, weight in before.items():
        assert torch.equal(table.weight[untouched], weight[untouched])  # no row outside the step moved
    # the scored items' id embeddings did move (the state memory starts at zero weight: no gradient yet)
    ids = agent.online.item_embedding.weight
    assert (ids[step_items] != before[agent.online.item_embedding][step_items]).any(dim=1).all()


def test_the_lazy_polyak_target_equals_per_step_polyak_updates():
    n_items = 200
    tau = 0.2
    cfg = TrainConfig(loss_items="sampled", cql_negatives=8, tau=tau, n_step=2)
    agent = DQNAgent(network(n_items), cfg, item_counts=np.r_[0, np.arange(n_items) % 5 + 1.0])
    dense = copy.deepcopy(agent.target)  # the target as a lerp of every parameter after every step
    for step in range(6):
        agent.update(transitions(n_items, rows=5, seed=step))
        with torch.no_grad():
            for target, online in zip(dense.parameters(), agent.online.parameters(), strict=True):
                target.lerp_(online, tau)
    lagging = agent.target.item_embedding.weight.detach().clone()
    agent.settle_target()
    assert not torch.allclose(lagging, agent.target.item_embedding.weight)  # rows did wait
    for name, value in dense.state_dict().items():
        torch.testing.assert_close(agent.target.state_dict()[name], value, msg=name)


def test_a_sampled_agent_learns_the_logged_actions():
    states = [[1, 2], [2, 3, 4], [5], [], [6, 7, 8, 9], [9, 1]]
    actions = [3, 7, 1, 10, 2, 5]
    items = np.zeros((6, 4), np.int64)
    for row, state in enumerate(states):
        if state:
            items[row, -len(state) :] = state
    batch = data.TransitionBatch.from_state(
        items, (items > 0).astype(np.int64), np.array(actions), np.full(6, 1), np.ones(6, np.float32), np.zeros(6, bool)
    )
    torch.manual_seed(0)
    model = network(10)
    counts = np.bincount(actions, minlength=11).astype(float)
    agent = DQNAgent(model, TrainConfig(lr=1e-2, gamma=0.5, loss_items="sampled", cql_negatives=3), item_counts=counts)
    for _ in range(200):
        metrics = agent.update(batch)
    assert all(torch.isfinite(value) for value in metrics.values())
    model.eval()
    with torch.no_grad():
        q = model.q_values(torch.from_numpy(batch.state_items), torch.from_numpy(batch.state_events))
    assert q.argmax(dim=1).tolist() == actions


@pytest.mark.parametrize("mode", ["dqn", "sqn"])
def test_a_sampled_step_runs_under_bf16_autocast(mode):
    """The mixed-precision path used on CUDA, exercised with CPU autocast."""
    model = network(40, heads="two" if mode == "sqn" else "one")
    cfg = TrainConfig(mode=mode, loss_items="sampled", cql_negatives=8)
    agent = DQNAgent(model, cfg, amp_dtype=torch.bfloat16, item_counts=np.r_[0, np.ones(40)])
    for step in range(3):
        metrics = agent.update(transitions(40, seed=step))
    assert all(torch.isfinite(value) for value in metrics.values())
    assert metrics["loss/total"].dtype == torch.float32
