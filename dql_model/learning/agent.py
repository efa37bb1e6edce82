"""Losses and updates: double-DQN TD loss plus the discrete CQL term, or supervised only, or both (SQN).

    loss = td_weight * Huber(Q(s, a), R + gamma^k * (1 - done) * Q_target(s', argmax_a' Q(s', a')))
         + cql_alpha * mean(logsumexp_a Q(s, a) - Q(s, a_logged))

R = r_t + gamma r_{t+1} + ... + gamma^(k-1) r_{t+k-1} is the n-step return (k = 1 by default) and
s' the state k actions later. With mode="supervised" the loss is the conservative term alone,
which is exactly the cross-entropy of the next item under softmax(Q(s, ·)): the supervised
baseline, same network.

With ``cql_negatives`` = m > 0 the catalogue is never scored whole: the logsumexp runs over the
logged action and m items drawn uniformly per batch (their Q-values shifted by log((N - 1) / m),
so it estimates the full-catalogue value), and the TD argmax runs over those items plus the
batch's logged actions. This is the variant for catalogues whose [batch, N] matrix does not fit.

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
from dataclasses import dataclass

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


def sampled_conservative_term(
    q_logged: torch.Tensor, q_sampled: torch.Tensor, sampled: torch.Tensor, action: torch.Tensor, n_items: int
) -> torch.Tensor:
    """Per row estimate of logsumexp_a Q(s, a) - Q(s, a_logged) from m uniformly sampled items.

    q_sampled [B, m] are the Q-values of ``sampled`` [m]; each stands for (N - 1) / m items of
    the catalogue other than the logged one, so it enters the logsumexp shifted by the log of
    that; a sampled item equal to the row's logged action is left out (it is counted already).
    """
    shift = math.log(max(n_items - 1, 1) / sampled.shape[0])
    others = (q_sampled + shift).masked_fill(sampled[None, :] == action[:, None], float("-inf"))
    return torch.logsumexp(torch.cat([q_logged[:, None], others], dim=1), dim=1) - q_logged


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


def _sampled_parts(v: Vectors, online: QNetwork, target: QNetwork | None, cfg: TrainConfig):
    """The same four parts from cfg.cql_negatives sampled items (module docstring)."""
    n_items = online.n_items
    sampled = torch.randint(1, n_items + 1, (cfg.cql_negatives,), device=v.action.device)

    def scores(network, state, items, head):
        return state @ network.head_item_vectors(items)[head].T + network.head_biases(items)[head]

    def pairs(network, state, items, head):
        return (state * network.head_item_vectors(items)[head]).sum(dim=-1) + network.head_biases(items)[head]

    q_logged = pairs(online, v.state_q, v.action, 0).float()
    conservative = sampled_conservative_term(
        q_logged, scores(online, v.state_q, sampled, 0).float(), sampled, v.action, n_items
    )
    cross_entropy = None
    if v.state_next is not None:
        logits_logged = pairs(online, v.state_next, v.action, 1).float()
        logits_sampled = scores(online, v.state_next, sampled, 1).float()
        cross_entropy = sampled_conservative_term(logits_logged, logits_sampled, sampled, v.action, n_items)
    td_target = None
    if target is not None:
        with torch.no_grad():
            candidates = torch.unique(torch.cat([sampled, v.action]))
            best = candidates[scores(online, v.next_online, candidates, 0).argmax(dim=1)]
            next_value = pairs(target, v.next_target, best, 0).float()
            td_target = _bootstrap(v.reward, v.done, cfg.gamma, v.steps, next_value)
    return q_logged, conservative, cross_entropy, td_target


def compute_loss(
    batch: TensorBatch | SequenceTensors,
    online: QNetwork,
    target: QNetwork | None,
    cfg: TrainConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of one batch and its parts as detached scalars named loss/*, q/*."""
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
    sampled = 0 < cfg.cql_negatives < online.n_items
    parts = _sampled_parts if sampled else _full_catalogue_parts
    q_logged, conservative_rows, cross_entropy_rows, td_target = parts(vectors, online, bootstrap, cfg)
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


class DQNAgent:
    """Online and target Q-networks, the optimizer and the target-update schedule."""

    def __init__(
        self,
        online: QNetwork,
        cfg: TrainConfig,
        *,
        device: torch.device | str = "cpu",
        amp_dtype: torch.dtype | None = None,
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
        self.target: QNetwork | None = None
        if cfg.mode in ("dqn", "sqn"):
            self.target = copy.deepcopy(online).eval().requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.online.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.steps = 0

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
        with self._autocast():
            loss, metrics = compute_loss(batch, self.online, self.target, self.cfg)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        metrics["grad/norm"] = torch.nn.utils.clip_grad_norm_(
            self.online.parameters(), self.cfg.grad_clip
        ).detach()
        self.optimizer.step()
        self.steps += 1
        self._update_target()
        return metrics

    def _update_target(self) -> None:
        if self.target is None:
            return
        if self.cfg.target_update == "polyak":
            self.sync_target(self.cfg.tau)
        elif self.steps % self.cfg.target_every == 0:
            self.sync_target(1.0)

    @torch.no_grad()
    def sync_target(self, tau: float = 1.0) -> None:
        """target <- (1 - tau) * target + tau * online (tau=1 copies); buffers are copied."""
        if self.target is None:
            return
        online_params = list(self.online.parameters())
        target_params = list(self.target.parameters())
        if tau >= 1.0:
            torch._foreach_copy_(target_params, online_params)
        else:
            torch._foreach_lerp_(target_params, online_params, tau)
        for target_buffer, online_buffer in zip(self.target.buffers(), self.online.buffers(), strict=True):
            target_buffer.copy_(online_buffer)
