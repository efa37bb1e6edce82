"""Losses and updates: double-DQN TD loss plus the discrete CQL term, or supervised only.

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
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dql_model.config import TrainConfig
from dql_model.data import TransitionBatch
from dql_model.networks import QNetwork


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
            return torch.from_numpy(array).to(device=device, dtype=dtype, non_blocking=True)

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


def _full_catalogue_parts(batch, online, target, cfg, dqn: bool):
    """(Q(s, a_logged), conservative term per row, TD target or None) scoring every item."""
    # float(): the softmax and TD arithmetic stay in fp32 under bf16 autocast.
    q = online.q_values(batch.state_items, batch.state_events).float()
    q_logged = q.gather(1, batch.action[:, None])[:, 0]
    td_target = None
    if dqn:
        with torch.no_grad():
            next_online = online.q_values(batch.next_items, batch.next_events)
            next_target = target.q_values(batch.next_items, batch.next_events)
            reward, steps = batch.discounted_return(cfg.gamma)
            td_target = double_dqn_target(next_online, next_target, reward, batch.done, cfg.gamma, steps)
    return q_logged, conservative_term(q, batch.action), td_target


def _sampled_parts(batch, online, target, cfg, dqn: bool):
    """The same three parts from cfg.cql_negatives sampled items (module docstring)."""
    n_items = online.n_items
    sampled = torch.randint(1, n_items + 1, (cfg.cql_negatives,), device=batch.action.device)
    state = online.encode_state(batch.state_items, batch.state_events)
    q_logged = online.q_of_pairs(state, batch.action).float()
    q_sampled = online.q_of_items(state, sampled).float()
    conservative = sampled_conservative_term(q_logged, q_sampled, sampled, batch.action, n_items)
    td_target = None
    if dqn:
        with torch.no_grad():
            candidates = torch.unique(torch.cat([sampled, batch.action]))
            next_online = online.q_of_items(online.encode_state(batch.next_items, batch.next_events), candidates)
            best = candidates[next_online.argmax(dim=1)]
            next_state = target.encode_state(batch.next_items, batch.next_events)
            next_value = target.q_of_pairs(next_state, best).float()
            reward, steps = batch.discounted_return(cfg.gamma)
            td_target = _bootstrap(reward, batch.done, cfg.gamma, steps, next_value)
    return q_logged, conservative, td_target


def compute_loss(
    batch: TensorBatch,
    online: QNetwork,
    target: QNetwork | None,
    cfg: TrainConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of one batch and its parts as detached scalars named loss/*, q/*."""
    dqn = cfg.mode == "dqn"
    if dqn and target is None:
        raise ValueError("train.mode='dqn' needs a target network")
    sampled = 0 < cfg.cql_negatives < online.n_items
    parts = _sampled_parts if sampled else _full_catalogue_parts
    q_logged, conservative_rows, td_target = parts(batch, online, target, cfg, dqn)
    conservative = conservative_rows.mean()
    metrics = {"loss/cql": conservative.detach(), "q/mean": q_logged.detach().mean()}

    if not dqn:
        loss = conservative
    else:
        td = F.smooth_l1_loss(q_logged, td_target)
        loss = cfg.td_weight * td + cfg.cql_alpha * conservative
        metrics["loss/td"] = td.detach()
        metrics["q/target_mean"] = td_target.mean()
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
            raise ValueError(f"train.n_step={cfg.n_step} must be >= 1 and train.cql_negatives={cfg.cql_negatives} >= 0")
        self.cfg = cfg
        self.device = torch.device(device)
        self.amp_dtype = amp_dtype
        self.online = online.to(self.device)
        self.target: QNetwork | None = None
        if cfg.mode == "dqn":
            self.target = copy.deepcopy(online).eval().requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.online.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.steps = 0

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def update(self, batch: TransitionBatch | TensorBatch) -> dict[str, torch.Tensor]:
        """One gradient step; returns the batch's metrics as detached scalar tensors."""
        if isinstance(batch, TransitionBatch):
            batch = TensorBatch.from_numpy(batch, self.device)
        self.online.train()
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
