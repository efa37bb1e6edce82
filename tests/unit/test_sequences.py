"""Sequence-level training: windows of user sequences, per-position states, the losses of every
position from one pass, the SASRec encoder and SQN's two heads."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from dql_model.config import Config, ConfigError
from dql_model.contract import schema
from dql_model.learning import sequences, train
from dql_model.learning.agent import SequenceTensors, TensorBatch, compute_loss, n_step_positions
from dql_model.learning.networks import QNetwork
from dql_model.warehouse import data
from tests.factories import make_shop

torch.set_num_threads(1)
VIEW, CART = schema.EVENT_CODE[schema.VIEW], schema.EVENT_CODE[schema.ADD_TO_CART]


def rows(
    states: list[list[int]], actions: list[int], *, done: list[bool] | None = None
) -> data.TransitionBatch:
    """One-step transitions (all views) with left-padded states of width 8 and rewards 1, 2, 3, ..."""
    items = data.pad_left(pa.array(states, pa.list_(pa.int64())), 8)
    n = len(actions)
    return data.TransitionBatch.from_state(
        items,
        np.where(items > 0, VIEW, 0),
        np.array(actions),
        np.full(n, VIEW),
        np.arange(1, n + 1, dtype=np.float32),
        np.array(done or [False] * n),
    )


def test_a_user_becomes_prefix_then_actions_and_long_sequences_overlap_by_one_event():
    # User a: history [1, 2], then actions 3, 4, 5, 6; user b: no history, one action 7.
    batch = rows([[1, 2], [1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], []], [3, 4, 5, 6, 7])
    users = np.array(["a", "a", "a", "a", "b"])

    windows = sequences._windows(batch, users, seq_len=4)

    # a's tokens 1 2 3 4 5 6 -> windows [3 4 5 6] and [1 2 3] (stride 3: event 3 is in both).
    assert windows.items.tolist() == [[3, 4, 5, 6], [1, 2, 3, 0], [7, 0, 0, 0]]
    assert windows.loss.tolist() == [
        [False, True, True, True],  # 3 is context here: it is trained on in the earlier window
        [False, False, True, False],  # 1, 2 are history before the training window
        [True, False, False, False],  # b's first event: trained on from the empty state
    ]
    assert windows.reward.tolist() == [[0, 2, 3, 4], [0, 0, 1, 0], [5, 0, 0, 0]]
    assert len(windows) == 5 == len(batch)


@pytest.mark.parametrize("seq_len", [2, 3, 7, 50])
def test_every_action_is_trained_on_exactly_once_whatever_the_window(seq_len):
    rng = np.random.default_rng(seq_len)
    states, actions, users = [], [], []
    for user in range(6):
        history = list(rng.integers(1, 9, size=rng.integers(0, 4)))
        for _ in range(int(rng.integers(1, 12))):
            states.append(history[-4:])
            actions.append(int(rng.integers(1, 9)))
            history.append(actions[-1])
            users.append(f"u{user}")
    batch = rows(states, actions)

    windows = sequences._windows(batch, np.array(users), seq_len=seq_len)

    assert len(windows) == len(actions)
    assert sorted(windows.reward[windows.loss].tolist()) == sorted(batch.reward.tolist())
    assert windows.items.shape[1] == seq_len and windows.loss.any(axis=1).all()


def test_load_windows_reads_a_split_grouped_by_user(tmp_path):
    transitions, _ = make_shop(tmp_path, n_items=30, n_users=5, steps=6, max_len=4)

    windows = sequences.load_windows(transitions, max_len=4, seq_len=50, split=schema.TRAIN)

    # 5 users x 4 train steps; each user is one window: their first state (1 event) + 4 actions.
    assert len(windows) == 20 and windows.n_windows == 5
    assert (windows.loss.sum(1) == 4).all() and ((windows.items != 0).sum(1) == 5).all()
    batches = list(windows.batches(2, seed=3))
    assert [b.n_windows for b in batches] == [2, 2, 1] and sum(len(b) for b in batches) == 20


@pytest.mark.parametrize("encoder", ["gru", "lstm", "sasrec"])
@pytest.mark.parametrize("mode", ["dqn", "sqn"])
def test_the_state_after_each_position_is_the_state_scoring_sees(encoder, mode):
    cfg = Config().replace(model={"encoder": encoder, "state_memory": 3}, train={"mode": mode})
    torch.manual_seed(0)
    net = QNetwork(30, 4, cfg.model).eval()
    items = torch.tensor([[3, 5, 7, 9, 2], [4, 0, 0, 0, 0]])
    events = torch.tensor([[1, 2, 1, 3, 1], [2, 0, 0, 0, 0]])

    q_after, next_after = net.encode_sequences(items, events)

    for row, length in ((0, 5), (1, 1)):
        for t in range(length):
            state = torch.zeros(1, 8, dtype=torch.long)
            state_events = torch.zeros(1, 8, dtype=torch.long)
            state[0, 8 - t - 1 :], state_events[0, 8 - t - 1 :] = items[row, : t + 1], events[row, : t + 1]
            q_state, next_state = net.encode_heads(state, state_events)
            torch.testing.assert_close(q_state[0], q_after[row, t], atol=1e-5, rtol=1e-5)
            if mode == "sqn":
                torch.testing.assert_close(next_state[0], next_after[row, t], atol=1e-5, rtol=1e-5)
    assert (next_after is None) == (mode == "dqn")


def test_n_step_returns_stop_at_an_episode_end_and_at_the_window_end():
    batch = SequenceTensors(
        items=torch.tensor([[1, 2, 3, 4, 5]]),
        events=torch.full((1, 5), VIEW),
        loss=torch.tensor([[False, True, True, True, True]]),
        reward=torch.tensor([[0.0, 1.0, 2.0, 4.0, 8.0]]),
        done=torch.tensor([[False, False, True, False, False]]),
    )

    position, total, steps, done, last = n_step_positions(batch, gamma=0.5, n_step=3)

    assert position.tolist() == [1, 2, 3, 4]
    # 1 -> 1 + 0.5 * 2 (the episode ends at 2); 2 -> ends itself; 3 -> 4 + 0.5 * 8 (window ends).
    assert total.tolist() == [2.0, 2.0, 8.0, 8.0]
    assert steps.tolist() == [2, 1, 2, 1] and last.tolist() == [2, 2, 4, 4]
    assert done.tolist() == [True, True, False, False]


@pytest.mark.parametrize("mode", ["dqn", "supervised", "sqn"])
def test_a_window_gives_the_loss_its_transitions_give(mode):
    # One user, no history, actions 3 5 7 9 2: the same data as windows and as transition rows.
    cfg = Config().replace(
        model={"embed_dim": 8, "hidden_dim": 8, "dropout": 0.0, "state_memory": 2},
        train={"mode": mode, "n_step": 2, "gamma": 0.7},
    )
    torch.manual_seed(1)
    online = QNetwork(12, 3, cfg.model)
    target = QNetwork(12, 3, cfg.model)
    actions = [3, 5, 7, 9, 2]
    batch = rows([actions[:t] for t in range(5)], actions, done=[False, False, True, False, False])
    windows = sequences._windows(batch, np.array(["u"] * 5), seq_len=8)

    as_windows, _ = compute_loss(SequenceTensors.from_numpy(windows), online, target, cfg.train)
    as_rows, _ = compute_loss(TensorBatch.from_numpy(data.with_n_step(batch, 2)), online, target, cfg.train)

    torch.testing.assert_close(as_windows, as_rows, atol=1e-5, rtol=1e-5)


def test_two_heads_rank_by_a_blend_of_q_and_next_item_logits():
    cfg = Config().replace(train={"mode": "sqn"}, model={"embed_dim": 8, "hidden_dim": 8})
    net = QNetwork(10, 2, cfg.model).eval()
    with torch.no_grad():
        net.next_bias.weight.normal_()
    state = torch.tensor([[0, 3, 4]])
    events = torch.full((1, 3), VIEW) * (state != 0)
    q_state, next_state = net.encode_heads(state, events)
    q_bias, next_bias = net.head_biases()
    q_items, next_items = net.head_item_vectors()
    q = q_state @ q_items.T + q_bias
    logits = next_state @ next_items.T + next_bias  # the next-item head has embeddings of its own
    assert not torch.allclose(q_items, next_items)

    for weight in (0.0, 0.3, 1.0):
        net.head_weight.fill_(weight)
        blended = net.q_values(state, events)[:, 1:]
        torch.testing.assert_close(blended, (weight * q + (1 - weight) * logits)[:, 1:], atol=1e-5, rtol=1e-5)


def test_the_config_derives_the_heads_and_trains_the_recency_encoder_on_transitions():
    assert Config().replace(train={"mode": "sqn"}).model.heads == "two"
    assert Config().replace(train={"mode": "sqn"}).replace(train={"mode": "supervised"}).model.heads == "one"
    with pytest.warns(UserWarning, match="sequence batches need model.encoder one of gru, lstm, sasrec"):
        cfg = Config().replace(train={"batching": "sequences"}, model={"encoder": "attention"})
    assert cfg.train.batching == "transitions"
    with pytest.raises(ConfigError, match="train.seq_len=1 must be at least 2"):
        Config().replace(train={"seq_len": 1})


@pytest.mark.parametrize("encoder", ["gru", "sasrec"])
def test_sqn_trains_on_sequences_and_picks_its_blend_on_validation(tiny_config, tmp_path, encoder):
    transitions, item_index = make_shop(tmp_path, n_items=30, n_users=40, steps=12, max_len=8)
    cfg = tiny_config.replace(
        etl={"max_len": 8},
        model={"embed_dim": 16, "hidden_dim": 16, "dropout": 0.0, "encoder": encoder},
        train={
            "mode": "sqn",
            "batching": "sequences",
            "seq_len": 6,
            "epochs": 6,
            "seq_batch_size": 8,
            "lr": 1e-2,
        },
    )
    lines: list[str] = []

    result = train.train_model(
        cfg, transitions_dir=str(transitions), item_index_dir=str(item_index), progress=lines.append
    )

    assert result.n_transitions == 40 * 10
    assert any("sequence batches: 400 transitions" in line for line in lines)
    best = result.history[result.best_epoch - 1]
    assert {"loss/td", "loss/cql", "loss/next_item"} <= set(best)
    assert float(result.model.head_weight) == best[train.HEAD_WEIGHT_METRIC] in train.HEAD_WEIGHTS
    # The users follow a hidden successor rule (10% noise): learnt, not guessed.
    assert result.best_value > 0.5
