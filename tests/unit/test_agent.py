"""Double-DQN target, loss pieces, target updates and a tiny overfit."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dql_model.config import ConfigError, ModelConfig, TrainConfig
from dql_model.contract import schema
from dql_model.learning.agent import (
    DQNAgent,
    TensorBatch,
    compute_loss,
    double_dqn_target,
    sampled_conservative_term,
)
from dql_model.learning.networks import QNetwork
from dql_model.warehouse import data

torch.set_num_threads(1)
NEG = float("-inf")


def test_double_dqn_target_by_hand():
    # The padding column is huge in the online net: it must not be picked by the argmax.
    next_online = torch.tensor([[100.0, 1.0, 3.0, 2.0], [100.0, 5.0, 0.0, 1.0], [100.0, 0.0, 1.0, 4.0]])
    next_target = torch.tensor([[NEG, 10.0, 20.0, 30.0], [NEG, 7.0, 8.0, 9.0], [NEG, -1.0, -2.0, -3.0]])
    reward = torch.tensor([1.0, 0.5, 0.0])
    done = torch.tensor([0.0, 1.0, 0.0])
    got = double_dqn_target(next_online, next_target, reward, done, gamma=0.5)
    # row 0: online picks item 2, valued by target at 20 (not target's own max, 30)
    # row 1: done, only the reward; row 2: online picks item 3, target -3
    torch.testing.assert_close(got, torch.tensor([1.0 + 0.5 * 20.0, 0.5, 0.5 * -3.0]))
    assert not got.requires_grad


class FixedQ(torch.nn.Module):
    """A stand-in network with fixed Q-values for the state and for the next state.

    Its f(s) is the row of Q-values itself and g(a) the unit vector of a (no bias), so
    Q(s, ·) = f(s) g^T is exactly the given values, column 0 (padding) masked as QNetwork does.
    """

    next_head = None

    def __init__(self, q_state, q_next):
        super().__init__()
        self.q_state = torch.nn.Parameter(torch.tensor(q_state))
        self.q_next = torch.tensor(q_next)
        self.n_items = self.q_state.shape[1] - 1
        self.next_items = None

    def encode_heads(self, items, events):
        return (self.q_next if items is self.next_items else self.q_state), None

    def head_item_vectors(self, items=None):
        return torch.eye(self.n_items + 1), None

    def head_biases(self, items=None):
        return torch.zeros(self.n_items + 1), None

    def q_from_state(self, state, items, bias):
        # state @ eye + 0, written out: the padding column may hold -inf, and -inf * 0 is NaN.
        return state.masked_fill(torch.arange(self.n_items + 1) == 0, float("-inf"))


def _batch(reward=(1.0, 0.0), done=(0.0, 1.0), action=(2, 1)) -> TensorBatch:
    items = torch.zeros(2, 3, dtype=torch.long)
    return TensorBatch(
        state_items=items,
        state_events=items,
        action=torch.tensor(action),
        event_code=torch.ones(2, dtype=torch.long),
        reward=torch.tensor(reward),
        done=torch.tensor(done),
        next_items=items.clone(),
        next_events=items.clone(),
    )


def test_loss_pieces_by_hand():
    batch = _batch()
    online = FixedQ(
        [[NEG, 1.0, 2.0, 0.0], [NEG, 0.5, 0.0, 0.0]], [[NEG, 0.0, 3.0, 1.0], [NEG, 9.0, 9.0, 9.0]]
    )
    target = FixedQ([[NEG, 0.0, 0.0, 0.0]] * 2, [[NEG, 4.0, 2.0, 8.0], [NEG, 9.0, 9.0, 9.0]])
    online.next_items = target.next_items = batch.next_items
    cfg = TrainConfig(gamma=0.5, cql_alpha=0.3, td_weight=2.0)
    loss, metrics = compute_loss(batch, online, target, cfg)

    q_logged = np.array([2.0, 0.5])
    td_target = np.array([1.0 + 0.5 * 2.0, 0.0])  # row 0: online argmax item 2, target 2.0; row 1 done
    diff = np.abs(q_logged - td_target)
    huber = np.where(diff < 1, 0.5 * diff**2, diff - 0.5).mean()  # |0| and |0.5|
    lse = np.array([math.log(math.e**1 + math.e**2 + 1), math.log(math.e**0.5 + 2)])
    cql = (lse - q_logged).mean()
    assert metrics["loss/td"].item() == pytest.approx(huber)
    assert metrics["loss/cql"].item() == pytest.approx(cql, rel=1e-6)
    assert metrics["loss/total"].item() == pytest.approx(2.0 * huber + 0.3 * cql, rel=1e-6)
    assert metrics["q/mean"].item() == pytest.approx(q_logged.mean())
    assert loss.requires_grad


def tiny_network(n_items: int = 10, seed: int = 0) -> QNetwork:
    torch.manual_seed(seed)
    model = QNetwork(n_items, 2, ModelConfig(embed_dim=16, hidden_dim=16, price_buckets=4, dropout=0.0))
    model.set_item_features(np.arange(n_items + 1) % 3, np.arange(n_items + 1) % 5)
    return model


def numpy_batch(
    states: list[list[int]], actions: list[int], rewards=None, max_len: int = 4
) -> data.TransitionBatch:
    items = np.zeros((len(states), max_len), dtype=np.int64)
    for row, state in enumerate(states):
        if state:
            items[row, -len(state) :] = state
    events = (items > 0).astype(np.int64)
    n = len(actions)
    reward = np.asarray(rewards if rewards is not None else [0.0] * n, dtype=np.float32)
    return data.TransitionBatch.from_state(
        items,
        events,
        np.asarray(actions),
        np.full(n, schema.EVENT_CODE[schema.VIEW]),
        reward,
        np.zeros(n, bool),
    )


def test_supervised_mode_is_cross_entropy_without_td():
    model = tiny_network()
    batch = TensorBatch.from_numpy(numpy_batch([[1, 2], [3], []], [4, 5, 6], rewards=[1.0, 0.0, 0.3]))
    cfg = TrainConfig(mode="supervised", cql_alpha=7.0, td_weight=3.0)
    loss, metrics = compute_loss(batch, model, None, cfg)  # no target network needed
    q = model.q_values(batch.state_items, batch.state_events)
    torch.testing.assert_close(loss, F.cross_entropy(q[:, 1:], batch.action - 1))
    assert "loss/td" not in metrics
    # rewards play no part in the supervised loss
    batch.reward = torch.tensor([-5.0, 9.0, 2.0])
    torch.testing.assert_close(compute_loss(batch, model, None, cfg)[0], loss)
    # ...but they do in dqn mode
    dqn = TrainConfig(mode="dqn")
    target = copy.deepcopy(model)
    changed = compute_loss(batch, model, target, dqn)[0]
    batch.reward = torch.tensor([1.0, 0.0, 0.3])
    assert not torch.allclose(compute_loss(batch, model, target, dqn)[0], changed)


def test_tiny_network_overfits_logged_actions():
    states = [[1, 2], [2, 3, 4], [5], [], [6, 7, 8, 9], [9, 1]]
    actions = [3, 7, 1, 10, 2, 5]
    batch = numpy_batch(states, actions, rewards=[1.0, 0.0, 0.3, 0.0, 1.0, 0.0])
    model = tiny_network()
    agent = DQNAgent(model, TrainConfig(lr=1e-2, gamma=0.5))
    for _ in range(150):
        metrics = agent.update(batch)
    assert set(metrics) >= {"loss/td", "loss/cql", "loss/total", "q/mean", "grad/norm"}
    model.eval()
    with torch.no_grad():
        q = model.q_values(torch.from_numpy(batch.state_items), torch.from_numpy(batch.state_events))
    assert q.argmax(dim=1).tolist() == actions


def test_polyak_update_moves_target_by_tau():
    model = tiny_network()
    agent = DQNAgent(model, TrainConfig(target_update="polyak", tau=0.25))
    before = agent.target.state_head.weight.detach().clone()
    agent.update(numpy_batch([[1], [2]], [3, 4], rewards=[1.0, 1.0]))
    online = agent.online.state_head.weight.detach()
    assert not torch.allclose(online, before)
    torch.testing.assert_close(agent.target.state_head.weight, 0.75 * before + 0.25 * online)


def test_hard_update_copies_every_target_every_steps():
    model = tiny_network()
    agent = DQNAgent(model, TrainConfig(target_update="hard", target_every=3))
    initial = agent.target.item_bias.weight.detach().clone()
    batch = numpy_batch([[1], [2]], [3, 4], rewards=[1.0, 1.0])
    for _ in range(2):
        agent.update(batch)
    torch.testing.assert_close(agent.target.item_bias.weight, initial)
    agent.update(batch)
    torch.testing.assert_close(agent.target.item_bias.weight, agent.online.item_bias.weight)
    assert agent.target.training is False and not any(p.requires_grad for p in agent.target.parameters())


@pytest.mark.parametrize("mode", ["dqn", "supervised"])
def test_the_judged_weights_are_the_polyak_average_once_it_has_left_the_start(mode):
    batch = numpy_batch([[1], [2]], [3, 4], rewards=[1.0, 1.0])
    agent = DQNAgent(tiny_network(), TrainConfig(mode=mode, tau=0.5, lr=1e-2))
    assert agent.average_from_step == 5  # 0.5^5 = 3% of the start left, 0.5^4 = 6%
    for _ in range(4):
        agent.update(batch)
    assert agent.averaged is agent.online
    agent.update(batch)
    assert agent.averaged is agent.target  # supervised mode keeps the average too, for this
    online, averaged = agent.online.state_head.weight, agent.target.state_head.weight
    assert not torch.allclose(online, averaged)

    # Without it, or with hard target copies (no average), the online weights are judged.
    for cfg in (TrainConfig(mode=mode, averaged_weights=False), TrainConfig(mode=mode, target_update="hard")):
        agent = DQNAgent(tiny_network(), cfg)
        for _ in range(agent.average_from_step + 1):
            agent.update(batch)
        assert agent.averaged is agent.online
    assert DQNAgent(tiny_network(), TrainConfig(mode="supervised", averaged_weights=False)).target is None


def test_choices_are_refused_by_the_config_and_ranges_by_the_agent():
    # the config is the only gate for fixed-choice values: a bad one never reaches the agent
    with pytest.raises(ConfigError, match="train.mode='sarsa'"):
        TrainConfig(mode="sarsa")
    with pytest.raises(ConfigError, match="train.target_update='soft'"):
        TrainConfig(target_update="soft")
    with pytest.raises(ConfigError, match="train.purchase_credit='checkout'"):
        TrainConfig(purchase_credit="checkout")
    with pytest.raises(ValueError, match="train.n_step=0 must be >= 1"):
        DQNAgent(tiny_network(), TrainConfig(n_step=0))
    with pytest.raises(ValueError, match="train.cql_negatives=-1 >= 0"):
        DQNAgent(tiny_network(), TrainConfig(cql_negatives=-1))


@pytest.mark.parametrize("encoder", ["gru", "lstm", "attention", "sasrec"])
def test_bf16_autocast_update_runs(encoder):
    """The mixed-precision path used on CUDA, exercised with CPU autocast."""
    torch.manual_seed(0)
    model = QNetwork(10, 2, ModelConfig(encoder=encoder, embed_dim=16, hidden_dim=16, price_buckets=4))
    agent = DQNAgent(model, TrainConfig(), amp_dtype=torch.bfloat16)
    metrics = agent.update(numpy_batch([[1, 2], [3], []], [4, 5, 6], rewards=[1.0, 0.0, 0.3]))
    assert all(torch.isfinite(value) for value in metrics.values())
    assert metrics["loss/total"].dtype == torch.float32


def test_n_step_target_by_hand():
    next_online = torch.tensor([[NEG, 1.0, 3.0], [NEG, 5.0, 0.0], [NEG, 0.0, 1.0]])
    next_target = torch.tensor([[NEG, 10.0, 20.0], [NEG, 7.0, 8.0], [NEG, -1.0, -2.0]])
    items = torch.zeros(3, 2, dtype=torch.long)
    batch = TensorBatch(
        state_items=items,
        state_events=items,
        action=torch.tensor([1, 2, 1]),
        event_code=torch.ones(3, dtype=torch.long),
        reward=torch.tensor([1.0, 0.0, 0.3]),
        done=torch.tensor([0.0, 0.0, 1.0]),
        next_items=items,
        next_events=items,
        later_rewards=torch.tensor([[0.5, 2.0], [1.0, 0.0], [0.0, 0.0]]),
        n_steps=torch.tensor([3, 2, 1]),
    )
    reward, steps = batch.discounted_return(gamma=0.5)
    # row 0: 1 + 0.5 * 0.5 + 0.25 * 2 = 1.75; row 1: 0 + 0.5 * 1; row 2: 0.3
    torch.testing.assert_close(reward, torch.tensor([1.75, 0.5, 0.3]))
    got = double_dqn_target(next_online, next_target, reward, batch.done, gamma=0.5, steps=steps)
    # row 0 bootstraps after 3 steps from target's value (20) of online's argmax (item 2): 0.125 * 20
    # row 1 after 2 steps: online picks item 1, target 7 -> 0.25 * 7; row 2 is done
    torch.testing.assert_close(got, torch.tensor([1.75 + 0.125 * 20.0, 0.5 + 0.25 * 7.0, 0.3]))


def test_the_dqn_loss_regresses_on_the_double_dqn_target_of_the_target_network():
    online, target = tiny_network(seed=0), tiny_network(seed=1)
    batch = TensorBatch.from_numpy(numpy_batch([[1, 2], [3], []], [4, 5, 6], rewards=[1.0, 0.0, 0.3]))
    batch.next_items = torch.tensor([[0, 1, 2, 4], [0, 0, 3, 5], [0, 0, 0, 6]])
    cfg = TrainConfig(gamma=0.5, td_weight=1.0, cql_alpha=0.0)
    loss, metrics = compute_loss(batch, online, target, cfg)
    with torch.no_grad():
        next_online = online.q_values(batch.next_items, batch.next_events)
        next_target = target.q_values(batch.next_items, batch.next_events)
        reward, steps = batch.discounted_return(cfg.gamma)
        expected = double_dqn_target(next_online, next_target, reward, batch.done, cfg.gamma, steps)
        q_logged = online.q_values(batch.state_items, batch.state_events).gather(1, batch.action[:, None])[
            :, 0
        ]
    # online and target differ, so swapping their roles in the target would change it
    swapped = double_dqn_target(next_target, next_online, reward, batch.done, cfg.gamma, steps)
    assert not torch.allclose(expected, swapped)
    torch.testing.assert_close(metrics["q/target_mean"], expected.mean())
    torch.testing.assert_close(loss, F.smooth_l1_loss(q_logged, expected))


def test_sampled_conservative_term_by_hand():
    q_logged = torch.tensor([1.0, 0.0])
    sampled = torch.tensor([2, 5])
    q_sampled = torch.tensor([[0.5, -1.0], [3.0, 2.0]])
    action = torch.tensor([5, 4])
    got = sampled_conservative_term(q_logged, q_sampled, sampled, action, n_items=9)
    shift = math.log(8 / 2)  # each of the 2 sampled items stands for 4 of the other 8 items
    # row 0: item 5 is the logged action, so only item 2 is added; row 1: both
    expected = [
        math.log(math.e**1.0 + math.e ** (0.5 + shift)) - 1.0,
        math.log(1.0 + math.e ** (3.0 + shift) + math.e ** (2.0 + shift)) - 0.0,
    ]
    torch.testing.assert_close(got, torch.tensor(expected))


def test_sampled_term_estimates_the_full_one_and_trains():
    model = tiny_network(n_items=40)
    batch = TensorBatch.from_numpy(numpy_batch([[1, 2], [3], [], [7, 8]], [4, 5, 6, 9]))
    with torch.no_grad():
        full = compute_loss(batch, model, None, TrainConfig(mode="supervised"))[0]
        torch.manual_seed(0)
        estimates = [
            compute_loss(batch, model, None, TrainConfig(mode="supervised", loss_items="sampled", cql_negatives=20))[0]
            for _ in range(200)
        ]
    assert torch.stack(estimates).mean().item() == pytest.approx(full.item(), abs=0.05)

    states = [[1, 2], [2, 3, 4], [5], [], [6, 7, 8, 9], [9, 1]]
    actions = [3, 7, 1, 10, 2, 5]
    batch = numpy_batch(states, actions, rewards=[1.0, 0.0, 0.3, 0.0, 1.0, 0.0])
    torch.manual_seed(0)
    model = tiny_network()
    agent = DQNAgent(model, TrainConfig(lr=1e-2, gamma=0.5, loss_items="sampled", cql_negatives=4, n_step=2))
    for _ in range(200):
        metrics = agent.update(batch)
    assert all(torch.isfinite(value) for value in metrics.values())
    model.eval()
    with torch.no_grad():
        q = model.q_values(torch.from_numpy(batch.state_items), torch.from_numpy(batch.state_events))
    assert q.argmax(dim=1).tolist() == actions


def cold_network(id_dropout: float) -> QNetwork:
    torch.manual_seed(0)
    cfg = ModelConfig(embed_dim=16, hidden_dim=16, price_buckets=4, dropout=0.0, id_dropout=id_dropout)
    model = QNetwork(10, 2, cfg)
    model.set_item_features(np.arange(11) % 3, np.arange(11) % 5)
    model.set_cold_items(np.arange(11) == 8)  # item 8 is never a logged action below
    return model


@pytest.mark.parametrize("cql_negatives", [0, 6])
def test_a_step_never_moves_a_cold_items_own_id_and_id_dropout_trains_the_unknown_item(cql_negatives):
    batch = numpy_batch([[1, 2], [2, 3, 4], [5], []], [3, 7, 1, 10], rewards=[1.0, 0.0, 0.3, 0.0])
    loss_items = "sampled" if cql_negatives else "full"
    cfg = TrainConfig(lr=1e-2, gamma=0.5, loss_items=loss_items, cql_negatives=cql_negatives)

    plain = cold_network(id_dropout=0.0)
    id_row, bias_row = plain.item_embedding.weight[8].clone(), plain.item_bias.weight[8].clone()
    DQNAgent(plain, cfg).update(batch)
    # the softmax cannot push the cold item's own id and bias down: they are not read
    assert torch.equal(plain.item_embedding.weight[8], id_row)
    assert torch.equal(plain.item_bias.weight[8], bias_row)

    dropping = cold_network(id_dropout=0.5)
    torch.manual_seed(3)
    agent = DQNAgent(dropping, cfg)
    agent.update(batch)
    assert dropping.unknown_item.abs().sum() > 0  # learned from the warm items whose ids were hidden
    assert dropping.id_dropped.any()
    assert not agent.target.training  # the target network never drops ids
    # the draws are seeded: the same seed gives the same step, bit for bit
    again = cold_network(id_dropout=0.5)
    torch.manual_seed(3)
    DQNAgent(again, cfg).update(batch)
    for name, tensor in dropping.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
