"""The Q-network: Q(s, a) = <f(s), g(a)> + b(a). Forward passes only; losses live in agent.py.

f encodes the user's recent interactions (item embedding + event-type embedding per position,
left-padded, most recent last) with a GRU, an LSTM or a small causal self-attention stack.
g is an item tower over the item's id, category and log-price bucket embeddings, so an item
with little history still gets a sensible vector from its features. b is a per-item bias.

Items without history (``cold_item``, set by training: no logged action in the split trained on)
are scored from their features alone: their id embedding is replaced, wherever the id embedding
is read (the tower's input and the state's input), by one shared learned ``unknown_item``
embedding, and their bias by the mean bias of the known items of their category. A learned shared
cold bias would only ever meet cold items as negatives of the softmax and be driven down, which is
how a new item's own bias failed; the category's mean is what an average item of that category
earns. In training, ``model.id_dropout`` hides each item's id the same way with that probability
per gradient step (``draw_id_dropout``), so the tower learns to score an item from its category
and price, and the unknown embedding and the encoder learn what an unseen item means; in eval mode
nothing is drawn and only the cold items are replaced. The state memory's m(a) is left as it is:
it recalls an item of the user's own state (m(a) . m(a)), which needs no history.

State memory (``model.state_memory`` = k > 0): both vectors get embed_dim more components,
g(a) = [tower(a), m(a)] and f(s) = [head(encoder(s)), sum_p w[p, e_p] m(s_p)] over the k most
recent state items, with m a second item embedding and w learned per "how many interactions ago"
and event type. Shoppers often come back to what they just saw (the add-to-cart after a view,
the purchase after the cart); a sequence encoder squeezes item identity through its hidden
state and the tower makes similar items alike, while m(a) . m(a) stands out from m(a) . m(b),
so this path can lift exactly the items in the state (and learn which items follow which, as
a factorised item-to-item model does). Q is still <f(s), g(a)> + b(a) with f a function of the
state alone, so scoring a catalogue is one matrix product.

Encoders: every sequence encoder is an ``nn.Module`` built as ``Encoder(input_dim, hidden_dim,
cfg)`` (cfg the ModelConfig) whose ``forward(x, lengths)`` takes x [B, L, input_dim], the
embedded left-padded state, and lengths [B], the number of valid (most recent, trailing)
positions of each row, which may be 0; it returns [B, hidden_dim]. An empty row's output is
ignored (QNetwork uses its learned empty-state vector there), but it must be finite. How to add
an encoder:

1. write the class here with that constructor and forward (derive a padding mask from lengths
   if it needs one: position p of a row is valid when p >= L - length);
2. add it to ``ENCODERS`` under its name;
3. add the name to ``dql_model.config.Encoder`` (the config refuses any other value, and
   tests/unit/test_networks.py checks that the two lists agree).

The encoder's parameters are part of the saved state dict, so renaming an existing encoder's
attributes breaks loading the models already in the registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dql_model.config import AUTO, SEQUENCE_ENCODERS, ModelConfig
from dql_model.contract import schema

ATTENTION_LAYERS = 2
ATTENTION_HEADS = 2
EMBED_INIT_STD = 0.1
MEMORY_SCALE = 10.0
"""State-memory weights are MEMORY_SCALE * parameter: a larger scale makes Adam move them faster."""
ADDED_STATE = ("cold_item", "unknown_item", "unknown_next_item")
"""State-dict entries newer than the first saved models: absent from an old one, they load as zeros
(no cold items, unused unknown vectors), which scores exactly as that model was saved."""


def right_aligned(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Left-padded [B, L, D] -> right-padded: each row's valid suffix moved to the front, in order."""
    steps = x.shape[1]
    shift = (torch.arange(steps, device=x.device)[None, :] + (steps - lengths)[:, None]) % steps
    return x.gather(1, shift[:, :, None].expand(-1, -1, x.shape[2]))


class RecurrentEncoder(nn.Module):
    """A recurrent network (``rnn_class``) over the valid suffix of each left-padded sequence."""

    rnn_class: type[nn.RNNBase]

    def __init__(self, input_dim: int, hidden_dim: int, cfg: ModelConfig):
        super().__init__()
        self.rnn = self.rnn_class(input_dim, hidden_dim, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x [B, L, D] left-padded, lengths [B] -> hidden state after the last item [B, H].

        An empty row (length 0) is run as its last position alone: packing needs length >= 1.
        """
        lengths = lengths.clamp(min=1)
        # Move each row's valid suffix to position 0, then pack: padding never enters the
        # recurrence, and the result does not depend on L.
        right_padded = right_aligned(x, lengths)
        packed = nn.utils.rnn.pack_padded_sequence(
            right_padded, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, hidden = self.rnn(packed)
        if isinstance(hidden, tuple):  # LSTM returns (h, c)
            hidden = hidden[0]
        return hidden[-1]

    def forward_all(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x [B, T, D] right-padded -> the hidden state after every position [B, T, H].

        Padding comes after the valid prefix, so it never changes an output at a valid position.
        """
        return self.rnn(x)[0]


class GRUEncoder(RecurrentEncoder):
    rnn_class = nn.GRU


class LSTMEncoder(RecurrentEncoder):
    rnn_class = nn.LSTM


class AttentionBlock(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        batch, steps, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, steps, 3, self.heads, dim // self.heads).unbind(2)
        attended = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=allowed[:, None],
            dropout_p=self.attn_dropout if self.training else 0.0,
        )
        x = x + self.dropout(self.out(attended.transpose(1, 2).reshape(batch, steps, dim)))
        return x + self.dropout(self.ffn(self.norm2(x)))


class AttentionEncoder(nn.Module):
    """Causal self-attention over the sequence; the output at the last (most recent) position."""

    def __init__(self, input_dim: int, hidden_dim: int, cfg: ModelConfig):
        super().__init__()
        heads = ATTENTION_HEADS if hidden_dim % ATTENTION_HEADS == 0 else 1
        self.hidden_dim = hidden_dim
        self.input = nn.Linear(input_dim, hidden_dim)
        self.blocks = nn.ModuleList(
            AttentionBlock(hidden_dim, heads, cfg.dropout) for _ in range(ATTENTION_LAYERS)
        )
        self.norm = nn.LayerNorm(hidden_dim)

    def recency_encoding(self, steps: int, device: torch.device) -> torch.Tensor:
        """Sinusoidal encoding of "how many interactions ago", so it does not depend on L."""
        ago = torch.arange(steps - 1, -1, -1, device=device, dtype=torch.float32)[:, None]
        freq = torch.exp(
            torch.arange(0, self.hidden_dim, 2, device=device, dtype=torch.float32)
            * (-math.log(10_000.0) / self.hidden_dim)
        )
        enc = torch.zeros(steps, self.hidden_dim, device=device)
        enc[:, 0::2] = torch.sin(ago * freq)
        enc[:, 1::2] = torch.cos(ago * freq)[:, : self.hidden_dim // 2]
        return enc

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x [B, L, D] left-padded, lengths [B] -> output at the most recent position [B, H]."""
        steps = x.shape[1]
        # Left-padded with a contiguous valid suffix: position p is valid when p >= L - length.
        valid = torch.arange(steps, device=x.device)[None, :] >= (steps - lengths)[:, None]
        h = self.input(x) + self.recency_encoding(steps, x.device)
        causal = torch.ones(steps, steps, dtype=torch.bool, device=x.device).tril()
        # A padding position may attend to itself only: every row keeps one allowed key, so the
        # softmax never sees an all-masked row (which would give NaN).
        diagonal = torch.eye(steps, dtype=torch.bool, device=x.device)
        allowed = causal[None] & (valid[:, None, :] | diagonal[None])
        for block in self.blocks:
            h = block(h, allowed)
        return self.norm(h[:, -1])


class SASRecEncoder(nn.Module):
    """Causal self-attention as SASRec has it (Kang & McAuley, 2018): learned embeddings of the
    position counted from the first event, layer norm and dropout on the input, pre-norm blocks.

    Unlike ``attention`` (which encodes "how many events ago" and so only has an output for the
    most recent position), the output at position t depends on positions 0..t only, and does not
    change when events are appended: one pass gives the state after every event of a sequence,
    which is what sequence-level training needs. States longer than ``model.max_positions`` keep
    their latest events.
    """

    def __init__(self, input_dim: int, hidden_dim: int, cfg: ModelConfig):
        super().__init__()
        heads = ATTENTION_HEADS if hidden_dim % ATTENTION_HEADS == 0 else 1
        self.max_positions = cfg.max_positions
        self.input = nn.Linear(input_dim, hidden_dim)
        self.position = nn.Embedding(cfg.max_positions, hidden_dim)
        nn.init.normal_(self.position.weight, std=EMBED_INIT_STD)
        self.input_norm = nn.LayerNorm(hidden_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            AttentionBlock(hidden_dim, heads, cfg.dropout) for _ in range(ATTENTION_LAYERS)
        )
        self.norm = nn.LayerNorm(hidden_dim)

    def forward_all(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x [B, T, D] right-padded (T <= max_positions), lengths [B] -> output at every position [B, T, H]."""
        steps = x.shape[1]
        if steps > self.max_positions:
            raise ValueError(f"{steps} positions exceed model.max_positions={self.max_positions}")
        positions = torch.arange(steps, device=x.device)
        h = self.dropout(self.input_norm(self.input(x) + self.position(positions)))
        valid = positions[None, :] < lengths[:, None]
        causal = torch.ones(steps, steps, dtype=torch.bool, device=x.device).tril()
        # A padding position attends to itself only, so no softmax row is all masked (NaN).
        diagonal = torch.eye(steps, dtype=torch.bool, device=x.device)
        allowed = causal[None] & (valid[:, None, :] | diagonal[None])
        for block in self.blocks:
            h = block(h, allowed)
        return self.norm(h)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x [B, L, D] left-padded, lengths [B] -> output after the most recent event [B, H]."""
        if x.shape[1] > self.max_positions:
            x, lengths = x[:, -self.max_positions :], lengths.clamp(max=self.max_positions)
        lengths = lengths.clamp(min=1)
        out = self.forward_all(right_aligned(x, lengths), lengths)
        return out[torch.arange(x.shape[0], device=x.device), lengths - 1]


ENCODERS: dict[str, Callable[[int, int, ModelConfig], nn.Module]] = {
    "gru": GRUEncoder,
    "lstm": LSTMEncoder,
    "attention": AttentionEncoder,
    "sasrec": SASRecEncoder,
}
"""Sequence encoders by ``model.encoder`` name: Encoder(input_dim, hidden_dim, cfg) (module docstring); those in
``config.SEQUENCE_ENCODERS`` also have ``forward_all`` (a test holds the two together)."""


STATE_MEMORY_ON = 20
"""model.state_memory where ``auto`` turns it on (dql_model.learning.shape), and what ``auto`` builds when a
network is made without a night's data to decide from (the training step always decides first)."""


def memory_size(cfg: ModelConfig) -> int:
    """model.state_memory as a number: ``auto`` not yet decided from data reads as STATE_MEMORY_ON."""
    return STATE_MEMORY_ON if cfg.state_memory == AUTO else int(cfg.state_memory)


class QNetwork(nn.Module):
    """Q(s, a) = <f(s), g(a)> + b(a) over items 1..n_items (column 0 is padding)."""

    def __init__(self, n_items: int, n_categories: int, cfg: ModelConfig):
        super().__init__()
        self.n_items = n_items
        self.n_categories = n_categories
        self.cfg = cfg
        dim, hidden = cfg.embed_dim, cfg.hidden_dim

        self.item_embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.event_embedding = nn.Embedding(schema.N_EVENT_CODES, dim, padding_idx=0)
        self.category_embedding = nn.Embedding(n_categories + 1, dim)
        self.price_embedding = nn.Embedding(cfg.price_buckets + 1, dim)
        self.item_bias = nn.Embedding(n_items + 1, 1)
        self.register_buffer("item_category", torch.zeros(n_items + 1, dtype=torch.long))
        self.register_buffer("item_price_bucket", torch.zeros(n_items + 1, dtype=torch.long))
        self.register_buffer("padding_column", torch.arange(n_items + 1) == 0, persistent=False)
        # Zero-initialised (no random draw), so a catalogue without cold items and id_dropout=0
        # trains exactly as before these existed.
        self.unknown_item = nn.Parameter(torch.zeros(dim))
        self.register_buffer("cold_item", torch.zeros(n_items + 1, dtype=torch.bool))
        self.register_buffer("id_dropped", torch.zeros(n_items + 1, dtype=torch.bool), persistent=False)

        self.input_dropout = nn.Dropout(cfg.dropout)
        self.encoder = ENCODERS[cfg.encoder](dim, hidden, cfg)
        self.state_head = nn.Linear(hidden, dim)
        self.empty_state = nn.Parameter(torch.zeros(dim))
        self.memory_weight: nn.Parameter | None = None
        self.memory_embedding: nn.Embedding | None = None
        memory = memory_size(cfg)
        if memory > 0:
            self.memory_weight = nn.Parameter(torch.zeros(memory, schema.N_EVENT_CODES))
            self.memory_embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.item_tower = nn.Sequential(
            nn.Linear(3 * dim, hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(hidden, dim)
        )
        self.next_head: nn.Linear | None = None
        self.next_item_embedding: nn.Embedding | None = None
        self.next_bias: nn.Embedding | None = None
        if cfg.heads == "two":
            # SQN's second head on the same encoder: next-item logits <f_next(s), e(a)> + b_next(a)
            # with output embeddings of its own (SQN's heads are separate output layers: sharing g
            # ties the logits' scale to the Q-values' and slows the cross-entropy down). Ranking is
            # w * Q + (1 - w) * logits, still one dot product over concatenated vectors (see
            # encode_state); w (head_weight) is chosen on validation.
            self.next_head = nn.Linear(hidden, dim)
            self.next_empty_state = nn.Parameter(torch.zeros(dim))
            self.next_item_embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)
            self.next_bias = nn.Embedding(n_items + 1, 1)
            nn.init.zeros_(self.next_bias.weight)
            self.unknown_next_item = nn.Parameter(torch.zeros(dim))
            self.register_buffer("head_weight", torch.ones(()))
        self._init_weights()

    def _init_weights(self) -> None:
        for table in (
            self.item_embedding,
            self.event_embedding,
            self.category_embedding,
            self.price_embedding,
        ):
            nn.init.normal_(table.weight, std=EMBED_INIT_STD)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
            self.event_embedding.weight[0].zero_()
        nn.init.zeros_(self.item_bias.weight)
        if self.next_item_embedding is not None:
            nn.init.normal_(self.next_item_embedding.weight, std=EMBED_INIT_STD)
            with torch.no_grad():
                self.next_item_embedding.weight[0].zero_()
        if self.memory_embedding is not None:
            # Unit-norm rows on average, so m(a) . m(a) ~ 1 and m(a) . m(b) ~ 1 / sqrt(dim).
            nn.init.normal_(self.memory_embedding.weight, std=self.cfg.embed_dim**-0.5)
            with torch.no_grad():
                self.memory_embedding.weight[0].zero_()

    def set_item_features(self, category, price_bucket) -> None:
        """Category index and log-price bucket per item_idx (arrays of length n_items + 1)."""
        category = torch.as_tensor(category, dtype=torch.long)
        price_bucket = torch.as_tensor(price_bucket, dtype=torch.long)
        if category.shape != (self.n_items + 1,) or price_bucket.shape != (self.n_items + 1,):
            raise ValueError(f"item features must have n_items + 1 = {self.n_items + 1} rows")
        if category.max() > self.n_categories or price_bucket.max() > self.cfg.price_buckets:
            raise ValueError("item features exceed n_categories or model.price_buckets")
        self.item_category.copy_(category)
        self.item_price_bucket.copy_(price_bucket)

    def set_cold_items(self, cold) -> None:
        """Mark the items without history (bool array of length n_items + 1; row 0 is ignored)."""
        cold = torch.as_tensor(cold, dtype=torch.bool)
        if cold.shape != (self.n_items + 1,):
            raise ValueError(f"the cold-item mask must have n_items + 1 = {self.n_items + 1} rows")
        self.cold_item.copy_(cold & ~self.padding_column.to(cold.device))

    def draw_id_dropout(self) -> None:
        """Draw this gradient step's hidden ids (model.id_dropout); nothing in eval mode or at 0."""
        if not self.training or self.cfg.id_dropout <= 0:
            return
        dropped = torch.rand(self.n_items + 1, device=self.id_dropped.device) < self.cfg.id_dropout
        self.id_dropped.copy_(dropped & ~self.padding_column)

    def unknown_items(self) -> torch.Tensor:
        """[n_items + 1] bool: the items scored from their features only (module docstring)."""
        if self.training and self.cfg.id_dropout > 0:
            return self.cold_item | self.id_dropped
        return self.cold_item

    def item_ids(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Id embeddings of ``items`` (any shape; None: every item_idx), unknown items' replaced."""
        return self._replace_unknown(self.item_embedding, self.unknown_item, items)

    def _replace_unknown(self, table: nn.Embedding, unknown_vector: torch.Tensor, items) -> torch.Tensor:
        unknown = self.unknown_items()
        if items is None:
            rows, unknown = table.weight, unknown[:, None]
        else:
            rows, unknown = table(items), unknown[items][..., None]
        return torch.where(unknown, unknown_vector.to(rows.dtype), rows)

    def _category_mean_bias(self, bias: torch.Tensor) -> torch.Tensor:
        """[n_items + 1]: per item, the mean of ``bias`` over the known (not unknown) items of its
        category (over all known items where its category has none)."""
        warm = (~self.unknown_items() & ~self.padding_column).to(bias.dtype)
        sums = bias.new_zeros(self.n_categories + 1).index_add(0, self.item_category, bias * warm)
        counts = bias.new_zeros(self.n_categories + 1).index_add(0, self.item_category, warm)
        overall = (bias * warm).sum() / warm.sum().clamp(min=1)
        means = torch.where(counts > 0, sums / counts.clamp(min=1), overall)
        return means[self.item_category]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A model saved before these existed had no cold items and never used the unknown vectors.
        for name in ADDED_STATE:
            current = getattr(self, name, None)
            if current is not None and prefix + name not in state_dict:
                state_dict[prefix + name] = torch.zeros_like(current)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def encode_state(self, state_items: torch.Tensor, state_events: torch.Tensor) -> torch.Tensor:
        """f(s) of ranking: [B, L] left-padded item_idx and event codes -> [B, D] (see item_vectors).

        With two heads it is [w * f_q(s), (1 - w) * f_next(s)] (w = head_weight): against
        ``item_vectors`` [g(a), e(a)] and ``item_biases`` the ranking score w * Q + (1 - w) * logits
        is still one dot product.
        """
        q_state, next_state = self.encode_heads(state_items, state_events)
        if next_state is None:
            return q_state
        weight = self.head_weight.to(q_state.dtype)
        return torch.cat([weight * q_state, (1 - weight) * next_state], dim=-1)

    def encode_heads(
        self, state_items: torch.Tensor, state_events: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(f_q(s), f_next(s) or None without a second head), each [B, D], of left-padded states."""
        lengths = (state_items != 0).sum(1)
        x = self.input_dropout(self.item_ids(state_items) + self.event_embedding(state_events))
        hidden = self.encoder(x, lengths)
        memory = None
        if self.memory_weight is not None:
            memory = self._state_memory(state_items, state_events)
        empty = (lengths == 0)[:, None]
        return self._heads(hidden, memory, empty)

    def encode_sequences(
        self, items: torch.Tensor, events: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The state after every position of right-padded sequences [B, T]: (f_q, f_next or None), [B, T, D].

        Position t of the result is f(s) of the state that ends with event t, the same vector
        ``encode_heads`` gives for that state left-padded (up to the encoder's float rounding).
        """
        if not hasattr(self.encoder, "forward_all"):
            raise ValueError(
                f"model.encoder={self.cfg.encoder!r} has no per-position output; use one of {SEQUENCE_ENCODERS}"
            )
        lengths = (items != 0).sum(1)
        x = self.input_dropout(self.item_ids(items) + self.event_embedding(events))
        hidden = self.encoder.forward_all(x, lengths)
        memory = None
        if self.memory_weight is not None:
            memory = self._sequence_memory(items, events)
        return self._heads(hidden, memory, None)

    def _heads(self, hidden, memory, empty):
        """Head vectors from encoder outputs [..., H] (+ state memory [..., dim]); rows where
        ``empty`` holds get each head's learned empty-state vector."""
        vectors = [self.state_head(hidden)]
        if self.next_head is not None:
            vectors.append(self.next_head(hidden))
        out = []
        for vector, empty_state in zip(vectors, self.empty_state_vectors(), strict=False):
            if memory is not None:
                vector = torch.cat([vector, memory.to(vector.dtype)], dim=-1)
            empty_state = empty_state.to(vector.dtype)
            out.append(vector if empty is None else torch.where(empty, empty_state, vector))
        return out[0], (out[1] if len(out) > 1 else None)

    def empty_state_vectors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(f_q, f_next or None) of a state with no events, each [D]."""
        empties = [self.empty_state]
        if self.next_head is not None:
            empties.append(self.next_empty_state)
        if self.memory_weight is not None:
            empties = [torch.cat([empty, torch.zeros_like(empty)]) for empty in empties]
        return empties[0], (empties[1] if len(empties) > 1 else None)

    def _sequence_memory(self, items: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
        """``_state_memory`` of the state ending at every position of right-padded [B, T]: [B, T, dim]."""
        k = self.memory_weight.shape[0]
        padded_items = F.pad(items, (k - 1, 0))
        padded_events = F.pad(events, (k - 1, 0))
        recent = padded_items.unfold(1, k, 1)  # [B, T, k], the last entry is position t itself
        recent_events = padded_events.unfold(1, k, 1)
        ago = torch.arange(k - 1, -1, -1, device=items.device)
        weight = MEMORY_SCALE * self.memory_weight[ago[None, None, :], recent_events] * (recent != 0)
        return torch.einsum("btk,btkd->btd", weight, self.memory_embedding(recent))

    def _state_memory(self, state_items: torch.Tensor, state_events: torch.Tensor) -> torch.Tensor:
        """sum_p w[ago_p, event_p] m(s_p) over the latest state_memory items: [B, embed_dim]."""
        k = min(self.memory_weight.shape[0], state_items.shape[1])
        recent, events = state_items[:, -k:], state_events[:, -k:]
        ago = torch.arange(k - 1, -1, -1, device=recent.device)
        weight = MEMORY_SCALE * self.memory_weight[ago[None, :], events] * (recent != 0)
        return (weight.unsqueeze(-1) * self.memory_embedding(recent)).sum(dim=1)

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Item vectors of ranking for every item_idx [n_items + 1, D] (row 0 is padding), or for
        ``items`` only: g(a), or [g(a), e(a)] with two heads (see encode_state)."""
        q_vectors, next_vectors = self.head_item_vectors(items)
        return q_vectors if next_vectors is None else torch.cat([q_vectors, next_vectors], dim=-1)

    def head_item_vectors(
        self, items: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(g(a) of the Q head, e(a) of the next-item head or None), each [n_items + 1 or M, D].

        D is embed_dim, twice that with the state memory (module docstring).

        The subset form keeps the item tower's memory proportional to the items asked for, which
        is what the sampled conservative term needs on catalogues too large for one matrix.
        """
        ids = self.item_ids(items)
        if items is None:
            category, price = self.item_category, self.item_price_bucket
        else:
            category, price = self.item_category[items], self.item_price_bucket[items]
        features = torch.cat([ids, self.category_embedding(category), self.price_embedding(price)], dim=-1)
        heads = [self.item_tower(features)]
        if self.next_item_embedding is not None:
            heads.append(self._replace_unknown(self.next_item_embedding, self.unknown_next_item, items))
        if self.memory_embedding is not None:
            memory = self.memory_embedding.weight if items is None else self.memory_embedding(items)
            heads = [torch.cat([vectors, memory.to(vectors.dtype)], dim=-1) for vectors in heads]
        return heads[0], (heads[1] if len(heads) > 1 else None)

    def item_biases(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """b(a) of ranking for every item_idx [n_items + 1], or for ``items`` only (blended as
        ``encode_state`` is, with two heads)."""
        q_bias, next_bias = self.head_biases(items)
        if next_bias is None:
            return q_bias
        weight = self.head_weight.to(q_bias.dtype)
        return weight * q_bias + (1 - weight) * next_bias

    def head_biases(self, items: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(b_q(a), b_next(a) or None) for every item_idx, or for ``items`` only; an unknown item's
        is its category's mean (module docstring).

        The subset form reads the asked rows through the embedding (so a sparse-gradient table gets a
        gradient on those rows only) and takes the category means without gradient: a sampled step
        trains the known items it scores, not every item of an unknown one's category.
        """
        tables = [self.item_bias] + ([self.next_bias] if self.next_bias is not None else [])
        unknown = self.unknown_items()
        if items is None:
            biases = [table.weight[:, 0] for table in tables]
            biases = [torch.where(unknown, self._category_mean_bias(bias), bias) for bias in biases]
        else:
            unknown = unknown[items]
            biases = [
                torch.where(unknown, self._category_mean_bias(table.weight.detach()[:, 0])[items], table(items)[..., 0])
                for table in tables
            ]
        return biases[0], (biases[1] if len(biases) > 1 else None)

    def item_row_tables(self) -> list[nn.Embedding]:
        """The tables with one row per item_idx: the parameters whose size grows with the catalogue."""
        tables = [self.item_embedding, self.item_bias, self.memory_embedding, self.next_item_embedding, self.next_bias]
        return [table for table in tables if table is not None]

    def sparse_item_gradients(self, sparse: bool = True) -> None:
        """Give the item-row tables row-sparse gradients (only the rows a step reads), as sampled training
        needs; every read of them must then go through the subset forms (``items`` given)."""
        for table in self.item_row_tables():
            table.sparse = sparse

    def q_of_items(self, state: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Q-values of the same candidate items [M] for every row of f(s) [B, D]: [B, M]."""
        return state @ self.item_vectors(items).T + self.item_biases(items)

    def q_of_pairs(self, state: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Q(s_b, a_b) for one item per row: f(s) [B, D], items [B] -> [B]."""
        return (state * self.item_vectors(items)).sum(dim=-1) + self.item_biases(items)

    def q_from_state(self, state: torch.Tensor, items: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Q-values from precomputed f(s), g(·) and b(·); the padding column is -inf."""
        q = state @ items.T + bias
        return q.masked_fill(self.padding_column, float("-inf"))

    def q_values(self, state_items: torch.Tensor, state_events: torch.Tensor) -> torch.Tensor:
        """Q(s, ·): [B, n_items + 1], column 0 (padding) at -inf."""
        return self.q_from_state(
            self.encode_state(state_items, state_events), self.item_vectors(), self.item_biases()
        )

    forward = q_values
