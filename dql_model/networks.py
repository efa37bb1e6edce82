"""The Q-network: Q(s, a) = <f(s), g(a)> + b(a). Forward passes only; losses live in agent.py.

f encodes the user's recent interactions (item embedding + event-type embedding per position,
left-padded, most recent last) with a GRU, an LSTM or a small causal self-attention stack.
g is an item tower over the item's id, category and log-price bucket embeddings, so an item
with little history still gets a sensible vector from its features. b is a per-item bias.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dql_model import schema
from dql_model.config import ModelConfig

ENCODERS = ("gru", "lstm", "attention")
ATTENTION_LAYERS = 2
ATTENTION_HEADS = 2
EMBED_INIT_STD = 0.1


class RecurrentEncoder(nn.Module):
    """GRU or LSTM over the valid (non-padding) suffix of each left-padded sequence."""

    def __init__(self, kind: str, input_dim: int, hidden_dim: int):
        super().__init__()
        rnn = nn.GRU if kind == "gru" else nn.LSTM
        self.rnn = rnn(input_dim, hidden_dim, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x [B, L, D] left-padded, lengths [B] (>= 1) -> hidden state after the last item [B, H]."""
        steps = x.shape[1]
        # Rotate each row so its valid suffix starts at position 0, then pack: padding never
        # enters the recurrence, and the result does not depend on L.
        shift = (torch.arange(steps, device=x.device)[None, :] + (steps - lengths)[:, None]) % steps
        right_padded = x.gather(1, shift[:, :, None].expand(-1, -1, x.shape[2]))
        packed = nn.utils.rnn.pack_padded_sequence(
            right_padded, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, hidden = self.rnn(packed)
        if isinstance(hidden, tuple):  # LSTM returns (h, c)
            hidden = hidden[0]
        return hidden[-1]


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

    def __init__(self, input_dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        heads = ATTENTION_HEADS if hidden_dim % ATTENTION_HEADS == 0 else 1
        self.hidden_dim = hidden_dim
        self.input = nn.Linear(input_dim, hidden_dim)
        self.blocks = nn.ModuleList(
            AttentionBlock(hidden_dim, heads, dropout) for _ in range(ATTENTION_LAYERS)
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

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        steps = x.shape[1]
        h = self.input(x) + self.recency_encoding(steps, x.device)
        causal = torch.ones(steps, steps, dtype=torch.bool, device=x.device).tril()
        # A padding position may attend to itself only: every row keeps one allowed key, so the
        # softmax never sees an all-masked row (which would give NaN).
        diagonal = torch.eye(steps, dtype=torch.bool, device=x.device)
        allowed = causal[None] & (valid[:, None, :] | diagonal[None])
        for block in self.blocks:
            h = block(h, allowed)
        return self.norm(h[:, -1])


class QNetwork(nn.Module):
    """Q(s, a) = <f(s), g(a)> + b(a) over items 1..n_items (column 0 is padding)."""

    def __init__(self, n_items: int, n_categories: int, cfg: ModelConfig):
        super().__init__()
        if cfg.encoder not in ENCODERS:
            raise ValueError(f"model.encoder={cfg.encoder!r} is not one of {ENCODERS}")
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

        self.input_dropout = nn.Dropout(cfg.dropout)
        if cfg.encoder == "attention":
            self.encoder: nn.Module = AttentionEncoder(dim, hidden, cfg.dropout)
        else:
            self.encoder = RecurrentEncoder(cfg.encoder, dim, hidden)
        self.state_head = nn.Linear(hidden, dim)
        self.empty_state = nn.Parameter(torch.zeros(dim))
        self.item_tower = nn.Sequential(
            nn.Linear(3 * dim, hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(hidden, dim)
        )
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

    def encode_state(self, state_items: torch.Tensor, state_events: torch.Tensor) -> torch.Tensor:
        """f(s): [B, L] left-padded item_idx and event codes -> [B, embed_dim]."""
        valid = state_items != 0
        lengths = valid.sum(1)
        x = self.input_dropout(self.item_embedding(state_items) + self.event_embedding(state_events))
        if isinstance(self.encoder, AttentionEncoder):
            hidden = self.encoder(x, valid)
        else:
            hidden = self.encoder(x, lengths.clamp(min=1))
        state = self.state_head(hidden)
        empty = (lengths == 0)[:, None]
        return torch.where(empty, self.empty_state.to(state.dtype), state)

    def item_vectors(self) -> torch.Tensor:
        """g(a) for every item_idx: [n_items + 1, embed_dim] (row 0 is padding)."""
        features = torch.cat(
            [
                self.item_embedding.weight,
                self.category_embedding(self.item_category),
                self.price_embedding(self.item_price_bucket),
            ],
            dim=1,
        )
        return self.item_tower(features)

    def item_biases(self) -> torch.Tensor:
        """b(a) for every item_idx: [n_items + 1]."""
        return self.item_bias.weight[:, 0]

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
