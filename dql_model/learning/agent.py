"""Losses and updates: double-DQN TD loss plus the discrete CQL term, or supervised only, or both (SQN).

    loss = td_weight * Huber(Q(s, a), R + gamma^k * (1 - done) * Q_target(s', argmax_a' Q(s', a')))
         + cql_alpha * mean(logsumexp_a Q(s, a) - Q(s, a_logged))

R = r_t + gamma r_{t+1} + ... + gamma^(k-1) r_{t+k-1} is the n-step return (k = 1 by default) and
s' the state k actions later. With mode="supervised" the loss is the conservative term alone,
which is exactly the cross-entropy of the next item under softmax(Q(s, ·)): the supervised
baseline, same network.

Which items the softmax runs over is ``train.loss_items`` (``loss_items_for``): the full catalogue
(exact; the default up to ``train.full_loss_max_items`` items), or a sampled softmax whose cost
follows the batch, not the catalogue. The sampled one (``NegativeSampler``) scores, per step, the
distinct items of the batch's logged actions (in-batch negatives: draws from the training
popularity) and of ``train.cql_negatives`` uniform draws over the catalogue (the tail, cold items
included), each logit less the log of its expected count in that set, the probability
pi(a) = 1 - (1 - pop(a))^P (1 - 1/N)^m that it is among them (P actions in the batch, m draws;
about P * pop(a) + m / N for a rare item): sum_j exp(Q_j) / pi_j over the drawn items estimates
sum_a exp(Q(s, a)) without bias (log-Q correction, Bengio & Senecal 2008; mixed in-batch and
uniform negatives, Yang et al. 2020; the expected count of a distinct set as TensorFlow's samplers
with unique=True have it). A candidate equal to the row's logged action is left out (an accidental
hit): the logged action enters once, uncorrected.
With every item drawn once and no correction this is exactly the full softmax (tested).

At that scale the double-DQN target takes the online argmax over the step's candidate items and
values it with the target network. The candidates hold every logged action of the batch (where
CQL keeps the Q-mass) and a uniform sample of the rest, so the max is a max over the items the
conservative term has trained; over the unscored remainder it can only be lower than the full max,
which errs on the side DQN needs (its max over noisy estimates overestimates).

A sampled step reads and changes only the rows of its items: the item-row tables get row-sparse
gradients and a lazy Adam (torch's SparseAdam: moments of untouched rows wait), and the Polyak
target is lazy too: a target row is brought up to date, target = online + (1 - tau)^k
(target - online) for the k steps since it was last touched (exact, as its online row did not move
in between), only when the step reads or changes it (``settle_target`` brings every row up to date,
at the end of each epoch). Weight decay applies to the other parameters only in that mode.

With mode="sqn" (model.heads=two) the network has a second, next-item head on the same encoder
(Xin et al., SIGIR 2020); its cross-entropy is added to the DQN loss above, and the TD target and
the conservative term are the Q head's.

A batch is either transition rows (TensorBatch: each row its own state and next state) or
windows of user sequences (SequenceTensors, dql_model.learning.sequences): there every state comes from
one encoder pass, and each position's s' is the state k positions later in the same window.
Both are reduced to the same per-row ``Vectors`` before the losses.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dql_model.config import TrainConfig
from dql_model.learning.networks import QNetwork
from dql_model.learning.sequences import SequenceBatch
from dql_model.warehouse.data import TransitionBatch


def _to_device(array, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    return torch.from_numpy(array).to(device=device, dtype=dtype, non_blocking=True)


@dataclass
class TensorBatch:
    """A TransitionBatch on a device."""

    state_items: torch.Tensor
    state_events: torch.Tensor
    action: torch.Tensor
    event_code: torch.Tensor
    reward: torch.Tensor
    done: torch.Tensor
    next_items: torch.Tensor
    next_events: torch.Tensor
    later_rewards: torch.Tensor | None = None
    """[B, n - 1] rewards of the next actions in the n-step return; None: one step."""
    n_steps: torch.Tensor | None = None
    """[B] actions between the state and next_*; None: 1."""

    @classmethod
    def from_numpy(cls, batch: TransitionBatch, device: torch.device | str = "cpu") -> TensorBatch:
        def move(array, dtype):
            return _to_device(array, dtype, device)

        return cls(
            state_items=move(batch.state_items, torch.long),
            state_events=move(batch.state_events, torch.long),
            action=move(batch.action, torch.long),
            event_code=move(batch.event_code, torch.long),
            reward=move(batch.reward, torch.float32),
            done=move(batch.done, torch.float32),
            next_items=move(batch.next_items, torch.long),
            next_events=move(batch.next_events, torch.long),
            later_rewards=move(batch.later_rewards, torch.float32),
            n_steps=move(batch.n_steps, torch.long),
        )

    def discounted_return(self, gamma: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(R, k): the n-step discounted reward sum and its number of steps (None: one step)."""
        reward = self.reward.float()
        if self.later_rewards is None or self.later_rewards.shape[1] == 0:
            return reward, self.n_steps
        later = self.later_rewards.float()
        discounts = gamma ** torch.arange(1, later.shape[1] + 1, device=later.device, dtype=torch.float32)
        return reward + (later * discounts).sum(dim=1), self.n_steps


def double_dqn_target(
    next_q_online: torch.Tensor,
    next_q_target: torch.Tensor,
    reward: torch.Tensor,
    done: torch.Tensor,
    gamma: float,
    steps: torch.Tensor | None = None,
) -> torch.Tensor:
    """r + gamma^k * (1 - done) * Q_target(s', argmax_a Q_online(s', a)), padding column excluded.

    next_q_* are [B, n_items + 1]; ``reward`` is the (n-step, discounted) return and ``steps``
    the k of each row (None: 1). The result is [B] and carries no gradient.
    """
    with torch.no_grad():
        best_next = next_q_online[:, 1:].argmax(dim=1, keepdim=True) + 1
        next_value = next_q_target.gather(1, best_next)[:, 0].float()
        return _bootstrap(reward, done, gamma, steps, next_value)


def _bootstrap(reward, done, gamma: float, steps, next_value) -> torch.Tensor:
    discount = gamma if steps is None else gamma ** steps.float()
    return reward.float() + discount * (1.0 - done.float()) * next_value


def conservative_term(q: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Per row logsumexp_a Q(s, a) - Q(s, a_logged); the padding column (-inf) adds nothing."""
    return torch.logsumexp(q, dim=1) - q.gather(1, action[:, None])[:, 0]


def sampled_softmax_term(
    q_logged: torch.Tensor,
    q_candidates: torch.Tensor,
    candidates: torch.Tensor,
    log_weight: torch.Tensor,
    action: torch.Tensor,
) -> torch.Tensor:
    """Per row estimate of logsumexp_a Q(s, a) - Q(s, a_logged) from scored candidate items.

    q_candidates [B, K] are the Q-values of ``candidates`` [K]; each enters the logsumexp shifted by
    its ``log_weight`` [K] (log of its count in the sample minus log of its expected count: the log-Q
    correction), except where it is the row's logged action (an accidental hit), which is counted
    once already, uncorrected, as q_logged [B].
    """
    others = (q_candidates + log_weight).masked_fill(candidates[None, :] == action[:, None], float("-inf"))
    return torch.logsumexp(torch.cat([q_logged[:, None], others], dim=1), dim=1) - q_logged


def sampled_conservative_term(
    q_logged: torch.Tensor, q_sampled: torch.Tensor, sampled: torch.Tensor, action: torch.Tensor, n_items: int
) -> torch.Tensor:
    """``sampled_softmax_term`` of m uniform draws over the N - 1 items other than the logged one:
    each stands for (N - 1) / m of them, so its log-Q correction is log((N - 1) / m)."""
    shift = math.log(max(n_items - 1, 1) / sampled.shape[0])
    return sampled_softmax_term(q_logged, q_sampled, sampled, q_sampled.new_full(sampled.shape, shift), action)


def loss_items_for(cfg: TrainConfig, n_items: int) -> str:
    """The softmax a step runs, "full" or "sampled": train.loss_items, auto resolved by the catalogue's size."""
    if cfg.loss_items != "auto":
        return cfg.loss_items
    return "sampled" if n_items > cfg.full_loss_max_items else "full"


def describe_loss(cfg: TrainConfig, n_items: int, *, in_batch: bool = True) -> str:
    """The training log's line on the softmax a step runs (module docstring)."""
    if loss_items_for(cfg, n_items) == "full":
        return f"full softmax over {n_items} items"
    batch = " + the batch's actions" if in_batch else ""
    return f"sampled softmax: {cfg.cql_negatives} negatives{batch} of {n_items} items, log-Q corrected"


@dataclass
class Candidates:
    """The items a sampled step scores, and the log-Q correction of each."""

    items: torch.Tensor
    """[K] distinct item_idx."""
    log_weight: torch.Tensor
    """[K] -log(expected count in the step's candidates), added to each item's logit (log-Q correction)."""

    @classmethod
    def whole_catalogue(cls, n_items: int, device: torch.device | str = "cpu") -> Candidates:
        """Every item once, uncorrected: the sampled softmax then equals the full one."""
        items = torch.arange(1, n_items + 1, device=device)
        return cls(items, torch.zeros(n_items, device=device))


class NegativeSampler:
    """Candidates of a sampled step: the batch's actions plus ``negatives`` uniform draws (module docstring).

    ``popularity`` is how often each item_idx is a logged action in the training split ([N + 1]);
    without it (or with no actions counted) only the uniform draws are candidates, since the
    batch's actions then have no known expected count.
    """

    def __init__(self, n_items: int, negatives: int, popularity=None, device: torch.device | str = "cpu"):
        self.n_items, self.negatives, self.device = n_items, negatives, torch.device(device)
        self.popularity: torch.Tensor | None = None
        if popularity is not None:
            counts = torch.as_tensor(np.asarray(popularity, dtype=np.float64)).to(self.device)
            if counts.shape != (n_items + 1,):
                raise ValueError(f"popularity has {tuple(counts.shape)} entries, expected n_items + 1 = {n_items + 1}")
            if counts.sum() > 0:
                self.popularity = counts / counts.sum()
        if negatives < 1 and self.popularity is None:
            raise ValueError(
                f"train.cql_negatives={negatives}: a sampled softmax without training popularity needs "
                "at least one uniform negative per step"
            )

    @property
    def in_batch(self) -> bool:
        return self.popularity is not None

    def draw(self, actions: torch.Tensor) -> Candidates:
        """This step's distinct candidate items, each with -log P(it is among them); ``actions`` [P]
        are the batch's logged actions.

        P(a among them) = 1 - (1 - pop(a))^P (1 - 1/N)^m, its expected count in the set of distinct
        items: for a rare item about P * pop(a) + m / N, for a popular one at most 1. Counting an item
        once however often the batch holds it keeps a user's repeats (the view, the add-to-cart and the
        purchase of one item in one window) from inflating its weight for every other row.
        """
        drawn = torch.randint(1, self.n_items + 1, (self.negatives,), device=self.device)
        log_missed = self.negatives * math.log1p(-1 / self.n_items) if self.negatives else 0.0
        if self.popularity is None:
            items = torch.unique(drawn)
            log_missed = torch.full(items.shape, log_missed, dtype=torch.float64, device=self.device)
        else:
            items = torch.unique(torch.cat([actions.flatten(), drawn]))
            log_missed = actions.numel() * torch.log1p(-self.popularity[items]) + log_missed
        # An action outside the popularity counts (another split) has no known probability: floor it.
        included = (-torch.expm1(log_missed)).clamp(min=1e-12)
        return Candidates(items, (-included.log()).float())


@dataclass
class SequenceTensors:
    """A sequences.SequenceBatch on a device."""

    items: torch.Tensor
    events: torch.Tensor
    loss: torch.Tensor
    reward: torch.Tensor
    done: torch.Tensor

    @classmethod
    def from_numpy(cls, batch: SequenceBatch, device: torch.device | str = "cpu") -> SequenceTensors:
        dtypes = {
            "items": torch.long,
            "events": torch.long,
            "loss": torch.bool,
            "reward": torch.float32,
            "done": torch.bool,
        }
        return cls(
            **{name: _to_device(getattr(batch, name), dtype, device) for name, dtype in dtypes.items()}
        )


@dataclass
class Vectors:
    """What the losses need of a batch, whatever its layout: one row per transition trained on."""

    state_q: torch.Tensor
    """[P, D] f_q(s) (with gradient)."""
    state_next: torch.Tensor | None
    """[P, D] f_next(s) of the second head, or None."""
    action: torch.Tensor
    """[P] logged action."""
    next_online: torch.Tensor | None = None
    """[P, D] f_q(s') of the online network, no gradient (dqn/sqn only)."""
    next_target: torch.Tensor | None = None
    """[P, D] f_q(s') of the target network (dqn/sqn only)."""
    reward: torch.Tensor | None = None
    """[P] n-step discounted return."""
    steps: torch.Tensor | None = None
    """[P] actions between s and s' (None: 1)."""
    done: torch.Tensor | None = None
    """[P] the episode ended by s'."""


def transition_vectors(
    batch: TensorBatch, online: QNetwork, target: QNetwork | None, gamma: float
) -> Vectors:
    """Vectors of a batch of transition rows (each with its own state and next state)."""
    state_q, state_next = online.encode_heads(batch.state_items, batch.state_events)
    vectors = Vectors(state_q, state_next, batch.action)
    if target is not None:
        with torch.no_grad():
            vectors.next_online = online.encode_heads(batch.next_items, batch.next_events)[0]
            vectors.next_target = target.encode_heads(batch.next_items, batch.next_events)[0]
        vectors.reward, vectors.steps = batch.discounted_return(gamma)
        vectors.done = batch.done
    return vectors


def n_step_positions(batch: SequenceTensors, gamma: float, n_step: int):
    """(position, n-step return, k, done, last position) of every position trained on, flat over [S * T].

    The return gathers the rewards of the next positions while they are actions of the same
    window and no episode has ended, up to n_step of them; the state after the last one reached
    is the bootstrap state s'.
    """
    steps_per_row = batch.items.shape[1]
    loss, reward, done = batch.loss.flatten(), batch.reward.flatten(), batch.done.flatten()
    position = loss.nonzero()[:, 0]
    column = position % steps_per_row
    total = reward[position].clone()
    last = position.clone()
    alive = ~done[position]
    for k in range(1, n_step):
        following = (last + 1).clamp(max=loss.numel() - 1)
        extends = alive & (column + k < steps_per_row) & loss[following]
        total = total + (gamma**k) * reward[following] * extends
        last = torch.where(extends, following, last)
        alive = extends & ~done[following]
    return position, total, last - position + 1, done[last], last


def sequence_vectors(
    batch: SequenceTensors, online: QNetwork, target: QNetwork | None, gamma: float, n_step: int
) -> Vectors:
    """Vectors of a batch of windows: every state from one encoder pass (dql_model.learning.sequences)."""
    rows, steps_per_row = batch.items.shape
    heads = online.encode_sequences(batch.items, batch.events)
    position, total, steps, done, last = n_step_positions(batch, gamma, n_step)
    empties = online.empty_state_vectors()

    def states_before(after: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
        # The state of position t is the one after event t - 1; position 0 has the empty state.
        before = torch.cat([empty.to(after.dtype).expand(rows, 1, -1), after[:, :-1]], dim=1)
        return before.reshape(rows * steps_per_row, -1)[position]

    state_q = states_before(heads[0], empties[0])
    state_next = None if heads[1] is None else states_before(heads[1], empties[1])
    action = batch.items.flatten()[position]
    vectors = Vectors(state_q, state_next, action)
    if target is not None:
        with torch.no_grad():
            vectors.next_online = heads[0].detach().reshape(rows * steps_per_row, -1)[last]
            target_after = target.encode_sequences(batch.items, batch.events)[0]
            vectors.next_target = target_after.reshape(rows * steps_per_row, -1)[last]
        vectors.reward, vectors.steps, vectors.done = total, steps, done.float()
    return vectors


def _full_catalogue_parts(v: Vectors, online: QNetwork, target: QNetwork | None, cfg: TrainConfig):
    """(Q(s, a_logged), conservative term, next-item cross-entropy or None, TD target or None)
    per row, scoring every item."""
    items, next_items = online.head_item_vectors()
    q_bias, next_bias = online.head_biases()
    # float(): the softmax and TD arithmetic stay in fp32 under bf16 autocast.
    q = online.q_from_state(v.state_q, items, q_bias).float()
    q_logged = q.gather(1, v.action[:, None])[:, 0]
    cross_entropy = None
    if v.state_next is not None:
        logits = online.q_from_state(v.state_next, next_items, next_bias).float()
        cross_entropy = conservative_term(logits, v.action)
    td_target = None
    if target is not None:
        with torch.no_grad():
            next_online = online.q_from_state(v.next_online, items.detach(), q_bias.detach())
            target_items = target.head_item_vectors()[0]
            next_target = target.q_from_state(v.next_target, target_items, target.head_biases()[0])
            td_target = double_dqn_target(next_online, next_target, v.reward, v.done, cfg.gamma, v.steps)
    return q_logged, conservative_term(q, v.action), cross_entropy, td_target


def _sampled_parts(v: Vectors, online: QNetwork, target: QNetwork | None, cfg: TrainConfig, candidates: Candidates):
    """The same four parts from the step's candidate items only (module docstring)."""
    step_items, where = torch.unique(torch.cat([candidates.items, v.action]), return_inverse=True)
    at_candidate, at_action = where[: candidates.items.shape[0]], where[candidates.items.shape[0] :]
    # The item tower runs on the step's distinct items only.
    vectors, biases = online.head_item_vectors(step_items), online.head_biases(step_items)

    def scores(state, head):
        return state @ vectors[head][at_candidate].T + biases[head][at_candidate]

    def logged(state, head):
        return (state * vectors[head][at_action]).sum(dim=-1) + biases[head][at_action]

    def term(state, head):
        q_logged = logged(state, head).float()
        rows = sampled_softmax_term(
            q_logged, scores(state, head).float(), candidates.items, candidates.log_weight, v.action
        )
        return q_logged, rows

    q_logged, conservative = term(v.state_q, 0)
    cross_entropy = None if v.state_next is None else term(v.state_next, 1)[1]
    td_target = None
    if target is not None:
        with torch.no_grad():
            next_q = v.next_online @ vectors[0][at_candidate].detach().T + biases[0][at_candidate].detach()
            best = candidates.items[next_q.argmax(dim=1)]
            target_vectors, target_biases = target.head_item_vectors(best)[0], target.head_biases(best)[0]
            next_value = (v.next_target * target_vectors).sum(dim=-1) + target_biases
            td_target = _bootstrap(v.reward, v.done, cfg.gamma, v.steps, next_value.float())
    return q_logged, conservative, cross_entropy, td_target


def batch_actions(batch: TensorBatch | SequenceTensors) -> torch.Tensor:
    """[P] the logged actions a batch trains on."""
    if isinstance(batch, SequenceTensors):
        return batch.items[batch.loss]
    return batch.action


def batch_item_rows(batch: TensorBatch | SequenceTensors) -> torch.Tensor:
    """Every item_idx a batch holds (states, actions, next states; with repeats and padding)."""
    if isinstance(batch, SequenceTensors):
        return batch.items.flatten()
    return torch.cat([batch.state_items.flatten(), batch.action, batch.next_items.flatten()])


def compute_loss(
    batch: TensorBatch | SequenceTensors,
    online: QNetwork,
    target: QNetwork | None,
    cfg: TrainConfig,
    candidates: Candidates | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of one batch and its parts as detached scalars named loss/*, q/*.

    With a sampled softmax (``loss_items_for``) the step scores ``candidates``; None draws them
    (uniform negatives only: the caller knows no popularity)."""
    dqn = cfg.mode in ("dqn", "sqn")
    if dqn and target is None:
        raise ValueError(f"train.mode={cfg.mode!r} needs a target network")
    if (cfg.mode == "sqn") != (online.next_head is not None):
        raise ValueError(
            f"train.mode={cfg.mode!r} and a network with model.heads={online.cfg.heads!r} do not match"
        )
    bootstrap = target if dqn else None
    if isinstance(batch, SequenceTensors):
        vectors = sequence_vectors(batch, online, bootstrap, cfg.gamma, cfg.n_step)
    else:
        vectors = transition_vectors(batch, online, bootstrap, cfg.gamma)
    if loss_items_for(cfg, online.n_items) == "sampled":
        if candidates is None:
            sampler = NegativeSampler(online.n_items, cfg.cql_negatives, device=vectors.action.device)
            candidates = sampler.draw(vectors.action)
        parts = _sampled_parts(vectors, online, bootstrap, cfg, candidates)
    else:
        parts = _full_catalogue_parts(vectors, online, bootstrap, cfg)
    q_logged, conservative_rows, cross_entropy_rows, td_target = parts
    conservative = conservative_rows.mean()
    metrics = {"loss/cql": conservative.detach(), "q/mean": q_logged.detach().mean()}

    if not dqn:
        loss = conservative
    else:
        td = F.smooth_l1_loss(q_logged, td_target)
        loss = cfg.td_weight * td + cfg.cql_alpha * conservative
        metrics["loss/td"] = td.detach()
        metrics["q/target_mean"] = td_target.mean()
    if cross_entropy_rows is not None:
        cross_entropy = cross_entropy_rows.mean()
        loss = loss + cross_entropy
        metrics["loss/next_item"] = cross_entropy.detach()
    metrics["loss/total"] = loss.detach()
    return loss, metrics


class _SplitOptimizer:
    """Adam over the dense parameters and SparseAdam over the item-row tables, as one optimizer."""

    def __init__(self, dense: torch.optim.Optimizer, rows: torch.optim.Optimizer):
        self.parts = {"dense": dense, "rows": rows}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts.values():
            part.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for part in self.parts.values():
            part.step()

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, part in self.parts.items():
            part.load_state_dict(state[name])


AVERAGE_SETTLED = 0.05
"""Largest share of the starting weights in the Polyak average that training judges instead of the
online weights: before that (299 steps at tau 0.01) the average still lags towards an untrained or
yesterday's network, and short runs would publish it (a 60-step run keeps 55% of its start)."""


class DQNAgent:
    """Online and target Q-networks, the optimizer and the target-update schedule.

    ``item_counts`` (logged actions per item_idx of the training split) lets a sampled softmax use
    the batch's actions as negatives (module docstring).
    """

    def __init__(
        self,
        online: QNetwork,
        cfg: TrainConfig,
        *,
        device: torch.device | str = "cpu",
        amp_dtype: torch.dtype | None = None,
        item_counts=None,
    ):
        # mode, target_update and purchase_credit are checked by the config (their Literal types).
        if cfg.n_step < 1 or cfg.cql_negatives < 0:
            raise ValueError(
                f"train.n_step={cfg.n_step} must be >= 1 and train.cql_negatives={cfg.cql_negatives} >= 0"
            )
        self.cfg = cfg
        self.device = torch.device(device)
        self.amp_dtype = amp_dtype
        self.online = online.to(self.device)
        self.sampler: NegativeSampler | None = None
        if loss_items_for(cfg, online.n_items) == "sampled":
            self.sampler = NegativeSampler(online.n_items, cfg.cql_negatives, item_counts, self.device)
        self.online.sparse_item_gradients(self.sampler is not None)
        self.target: QNetwork | None = None
        """The TD target's network in dqn and sqn; the Polyak average that ``averaged`` names, in any mode."""
        if cfg.mode in ("dqn", "sqn") or self.averages:
            self.target = copy.deepcopy(online).eval().requires_grad_(False)
        if self.sampler is None:
            self.optimizer = torch.optim.Adam(self.online.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            rows = [table.weight for table in self.online.item_row_tables()]
            row_ids = {id(weight) for weight in rows}
            dense = [p for p in self.online.parameters() if id(p) not in row_ids]
            self.optimizer = _SplitOptimizer(
                torch.optim.Adam(dense, lr=cfg.lr, weight_decay=cfg.weight_decay),
                torch.optim.SparseAdam(rows, lr=cfg.lr),
            )
        # Lazy Polyak target of the item rows (sampled mode): the step count of each row's last update.
        self._lazy_step = 0
        self._row_synced = torch.zeros(online.n_items + 1, dtype=torch.long, device=self.device)
        self.steps = 0
        self.step_loss: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]] = compute_loss
        """compute_loss's signature; distributed training routes it through DistributedDataParallel,
        which all-reduces the gradients of the backward pass."""

    @property
    def averages(self) -> bool:
        """Whether ``averaged`` is a Polyak average (train.averaged_weights with polyak target updates)."""
        return self.cfg.averaged_weights and self.cfg.target_update == "polyak"

    @property
    def average_from_step(self) -> int:
        """The step from which ``averaged`` is the average: where the starting weights' share of it,
        (1 - tau)^steps, falls to AVERAGE_SETTLED or below."""
        tau = self.cfg.tau
        return 0 if tau >= 1.0 else math.ceil(math.log(AVERAGE_SETTLED) / math.log1p(-tau))

    @property
    def averaged(self) -> QNetwork:
        """The weights training judges and keeps: the Polyak average of the online weights at rate tau
        (the target network, brought up to date by ``settle_target``) once it has left the starting
        weights behind (``average_from_step``), else the online ones."""
        if self.averages and self.steps >= self.average_from_step:
            return self.target
        return self.online

    @property
    def lazy_target(self) -> bool:
        """Item rows of the target follow the online ones lazily (sampled softmax, Polyak updates)."""
        return self.sampler is not None and self.target is not None and self.cfg.target_update == "polyak"

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def update(
        self, batch: TransitionBatch | TensorBatch | SequenceBatch | SequenceTensors
    ) -> dict[str, torch.Tensor]:
        """One gradient step; returns the batch's metrics as detached scalar tensors."""
        if isinstance(batch, TransitionBatch):
            batch = TensorBatch.from_numpy(batch, self.device)
        elif isinstance(batch, SequenceBatch):
            batch = SequenceTensors.from_numpy(batch, self.device)
        self.online.train()
        self.online.draw_id_dropout()  # one draw per step: every item vector of the step agrees
        candidates, rows = None, None
        if self.sampler is not None:
            candidates = self.sampler.draw(batch_actions(batch))
            # The rows this step reads (online and target) and changes: the batch's items and the candidates.
            rows = torch.unique(torch.cat([batch_item_rows(batch), candidates.items]))
            self._catch_up_target(rows)
        with self._autocast():
            loss, metrics = self.step_loss(batch, self.online, self.target, self.cfg, candidates)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        metrics["grad/norm"] = self._clip_gradients()
        self.optimizer.step()
        self.steps += 1
        self._update_target(rows)
        return metrics

    def _clip_gradients(self) -> torch.Tensor:
        """Scale the gradients to a norm of at most train.grad_clip; returns the norm before."""
        params = list(self.online.parameters())
        if self.sampler is None:
            return torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip).detach()
        grads = []
        for param in params:
            if param.grad is not None and param.grad.is_sparse:
                param.grad = param.grad.coalesce()  # repeated rows summed, so the norm is the gradient's
                grads.append(param.grad._values())
            elif param.grad is not None:
                grads.append(param.grad)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        scale = (self.cfg.grad_clip / (norm + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, scale)
        return norm.detach()

    def _update_target(self, rows: torch.Tensor | None) -> None:
        if self.target is None:
            return
        if self.lazy_target:
            self._lazy_step += 1
            self._lerp_dense(self.cfg.tau)
            self._lerp_rows(rows, self.cfg.tau)
        elif self.cfg.target_update == "polyak":
            self.sync_target(self.cfg.tau)
        elif self.steps % self.cfg.target_every == 0:
            self.sync_target(1.0)

    def _row_params(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(target, online) weights of the item-row tables."""
        return [
            (target.weight, online.weight)
            for target, online in zip(self.target.item_row_tables(), self.online.item_row_tables(), strict=True)
        ]

    @torch.no_grad()
    def _lerp_dense(self, tau: float) -> None:
        """Polyak step of every parameter but the item rows, and of the small buffers (the blend weight)."""
        row_ids = {id(online) for _, online in self._row_params()}
        pairs = [
            (t, o) for t, o in zip(self.target.parameters(), self.online.parameters(), strict=True) if id(o) not in row_ids
        ]
        torch._foreach_lerp_([t for t, _ in pairs], [o for _, o in pairs], tau)
        n_rows = self.online.n_items + 1
        for target_buffer, online_buffer in zip(self.target.buffers(), self.online.buffers(), strict=True):
            if target_buffer.dim() == 0 or target_buffer.shape[0] != n_rows:
                target_buffer.copy_(online_buffer)

    @torch.no_grad()
    def _lerp_rows(self, rows: torch.Tensor, tau: float) -> None:
        for target, online in self._row_params():
            target.index_copy_(0, rows, torch.lerp(target.index_select(0, rows), online.index_select(0, rows), tau))
        self._row_synced[rows] = self._lazy_step

    @torch.no_grad()
    def _catch_up_target(self, rows: torch.Tensor) -> None:
        """Bring the target's ``rows`` to where per-step Polyak updates would have them: their online
        rows have not moved since they were last updated, so k updates are one lerp by 1 - (1 - tau)^k."""
        if not self.lazy_target:
            return
        waited = self._lazy_step - self._row_synced[rows]
        rows = rows[waited > 0]  # a row updated at this step already is exact: leave it bit for bit
        keep = ((1.0 - self.cfg.tau) ** waited[waited > 0].double()).float()[:, None]
        for target, online in self._row_params():
            online_rows = online.index_select(0, rows)
            lagging = target.index_select(0, rows)
            target.index_copy_(0, rows, online_rows + keep.to(target.dtype) * (lagging - online_rows))
        self._row_synced[rows] = self._lazy_step

    def target_lag(self) -> dict[str, Any]:
        """What a checkpoint keeps besides the weights for the lazy target to go on exactly as it would
        have: the step count and each row's last update (settling instead would change the numbers)."""
        return {"lazy_step": self._lazy_step, "row_synced": self._row_synced.detach().cpu().clone()}

    def restore_target_lag(self, saved: dict[str, Any]) -> None:
        """The inverse of ``target_lag``; a checkpoint without it had its rows settled."""
        if saved:
            self._lazy_step = int(saved["lazy_step"])
            self._row_synced = saved["row_synced"].to(self.device)

    def settle_target(self) -> None:
        """Bring every lagging target row up to date (lazy Polyak target; nothing to do otherwise)."""
        if self.lazy_target:
            self._catch_up_target(torch.arange(self.online.n_items + 1, device=self.device))

    @torch.no_grad()
    def sync_target(self, tau: float = 1.0) -> None:
        """target <- (1 - tau) * target + tau * online (tau=1 copies); buffers are copied."""
        if self.target is None:
            return
        self.settle_target()
        online_params = list(self.online.parameters())
        target_params = list(self.target.parameters())
        if tau >= 1.0:
            torch._foreach_copy_(target_params, online_params)
        else:
            torch._foreach_lerp_(target_params, online_params, tau)
        for target_buffer, online_buffer in zip(self.target.buffers(), self.online.buffers(), strict=True):
            target_buffer.copy_(online_buffer)
