"""NeuMF (GMF + MLP, He et al. 2017), GMF and MLP alone, and a plain MF baseline (Rendle et al. 2020).

Each model maps (users, items) to logits and nothing else: no devices, no loss. Scoring is split into
`encode_users` (a user's embeddings through everything that depends on the user alone: for NeuMF, its half of
the first MLP layer), `encode_items` and `interact`, so that each user and each item is encoded once and their
pairs scored by gathering or broadcasting the encodings: evaluation encodes all candidates once, training on the
CPU each distinct user and item of a batch (kernels.py). `score_grid` scores every pair of encoded users and
items at once, for full-ranking evaluation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scalerec.kernels import Encoding, forward_by_rows, linear, lookup, onednn_pays

# How a model computes its CPU training step, (by distinct rows, by the hand-written per-sample node): scalerec's
# kernels (kernels.py); the others are what they are compared with in benchmarks/step_speed.py and the tests.
VARIANTS = {
    "scalerec": (True, True),
    "autograd": (True, False),  # autograd's backward of the per-sample part
    "embedding": (False, True),  # nn.Embedding's lookups and nn.Linear's first layer, per sample
    "plain": (False, False),  # autograd's every node
}


# Scoring's tiles of pairs (tile_pairs): on the CPU, activations that stay in cache; on a GPU, 1 GB of a first
# MLP layer's activations (2^22 pairs at a width of 64).
CPU_TILE_PAIRS = 8192
GPU_TILE_BYTES = 2**30


def tile_pairs(model: nn.Module, device: torch.device) -> int:
    """User-item pairs a model scores at once (NeuMF's MLP on a tile of pairs, sampled evaluation's batch of users
    and candidates): on the CPU few enough that the activations stay in cache; on a GPU enough to fill it, each
    tile a few kernels where the CPU's tiles would make hundreds of thousands at ML-20M's shape."""
    if device.type == "cpu":
        return CPU_TILE_PAIRS
    width = model.first_user.out_features if getattr(model, "use_mlp", False) else 64
    return max(CPU_TILE_PAIRS, GPU_TILE_BYTES // (4 * width))


class NeuMF(nn.Module):
    """GMF branch (elementwise product of embeddings) and MLP branch (concatenated embeddings through ReLU
    layers), fused by one linear layer; with gmf=False or mlp=False it is MLP or GMF alone. With sparse=True the
    embedding tables get sparse gradients (the batch's rows only), for optim.RowwiseAdam."""

    def __init__(
        self,
        n_users: int,
        n_items: int,
        factors: int = 64,
        layers: tuple[int, ...] = (256, 256, 128, 64),
        dropout: float = 0.0,
        gmf: bool = True,
        mlp: bool = True,
        sparse: bool = False,
        variant: str = "scalerec",
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        if not (gmf or mlp):
            raise ValueError("NeuMF needs the GMF branch, the MLP branch, or both")
        self.use_gmf, self.use_mlp, self.dropout = gmf, mlp, dropout
        self.distinct_rows, self.hand_backward = VARIANTS[variant]
        self.onednn = onednn_pays()  # the CPU's fp32 products by oneDNN where autograd is not needed (`linear`)
        self.n_users, self.n_items = n_users, n_items
        out = 0
        if gmf:
            self.gmf_user = nn.Embedding(n_users, factors, sparse=sparse)
            self.gmf_item = nn.Embedding(n_items, factors, sparse=sparse)
            out += factors
        if mlp:
            half = layers[0] // 2
            self.mlp_user = nn.Embedding(n_users, half, sparse=sparse)
            self.mlp_item = nn.Embedding(n_items, half, sparse=sparse)
            # The first layer on concat(user, item) is W_u @ user + W_i @ item + b: kept as two halves so that
            # evaluation computes each half once per user and once per item. Same FLOPs in training.
            self.first_user = nn.Linear(half, layers[1])
            self.first_item = nn.Linear(half, layers[1], bias=False)
            self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(layers[1:-1], layers[2:]))
            out += layers[-1]
        self.predict = nn.Linear(out, 1)
        self.reset_parameters(init_std)

    def reset_parameters(self, init_std: float = 0.01) -> None:
        """Embeddings N(0, init_std); linear layers Glorot uniform with zero biases (as in the NCF paper's code)."""
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, init_std)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.use_mlp:  # Glorot over the whole first layer (fan_in = both halves), then split
            w = torch.empty(self.first_user.out_features, 2 * self.first_user.in_features)
            nn.init.xavier_uniform_(w)
            with torch.no_grad():
                self.first_user.weight.copy_(w[:, : self.first_user.in_features])
                self.first_item.weight.copy_(w[:, self.first_user.in_features :])

    def tables(self, side: str) -> list[nn.Embedding]:
        """The embedding tables of one side ("user" or "item"): GMF's, then MLP's."""
        return [getattr(self, f"{b}_{side}") for b, used in (("gmf", self.use_gmf), ("mlp", self.use_mlp)) if used]

    def encode_users(self, users: torch.Tensor, distinct: bool = False) -> Encoding:
        """The users' encodings; distinct=True: the users are distinct and ascending (a cheaper backward)."""
        return self._encode("user", users, distinct)

    def encode_items(self, items: torch.Tensor, distinct: bool = False) -> Encoding:
        return self._encode("item", items, distinct)

    def _encode(self, side: str, ids: torch.Tensor, distinct: bool) -> Encoding:
        tables = self.tables(side)
        first = getattr(self, f"first_{side}") if self.use_mlp else None
        rows = list(lookup(tables, ids, distinct, first, self.onednn))
        return rows.pop(0) if self.use_gmf else None, rows.pop(0) if self.use_mlp else None

    def interact(self, user: Encoding, item: Encoding) -> torch.Tensor:
        gmf = user[0] * item[0] if self.use_gmf else None
        return self._head(gmf, user[1] + item[1] if self.use_mlp else None)

    def _head(self, gmf: torch.Tensor | None, first: torch.Tensor | None) -> torch.Tensor:
        """Logits from the GMF product and the first MLP layer's pre-activation."""
        parts = [gmf] if gmf is not None else []
        if first is not None:
            parts.append(self._mlp(first))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return self.predict(x).squeeze(-1)

    def _mlp(self, first: torch.Tensor) -> torch.Tensor:
        """The MLP branch's output from the first layer's pre-activation."""
        h = F.dropout(F.relu(first), self.dropout, self.training)
        for layer in self.hidden:  # oneDNN's products in scoring; autograd's (BLAS) where it tracks them
            h = F.dropout(linear(h, layer.weight, layer.bias, self.onednn, relu=True), self.dropout, self.training)
        return h

    def score_grid(self, user: Encoding, item: Encoding, pairs_per_tile: int | None = None) -> torch.Tensor:
        """Logits of every pair of U encoded users and I encoded items, [U, I]: interact() on all pairs. The GMF
        branch with its share of the prediction layer is one matrix product ((u * w) @ i.T); the MLP branch runs
        on tiles of about `pairs_per_tile` pairs (default: `tile_pairs`)."""
        n_users, n_items = len(next(t for t in user if t is not None)), len(next(t for t in item if t is not None))
        pairs_per_tile = pairs_per_tile or tile_pairs(self, self.predict.weight.device)
        w = self.predict.weight[0]
        out = self.predict.bias.expand(n_users, n_items).clone()
        if self.use_gmf:
            g = user[0].shape[1]
            out += linear(user[0] * w[:g], item[0], onednn=self.onednn)
            w = w[g:]
        if self.use_mlp:
            step = max(1, pairs_per_tile // n_users)
            for s in range(0, n_items, step):
                h = self._mlp(user[1][:, None, :] + item[1][None, s : s + step, :])  # [U, tile, hidden]
                out[:, s : s + step] += h @ w
        return out

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """On the CPU, by distinct rows (`forward_by_rows`). On a GPU, per sample with the first MLP layer as one
        product over the concatenated embeddings: finding the distinct rows would sync with the host every step
        (their count sizes the tensors), and the GPU has FLOPs to spare."""
        if users.device.type != "cuda":
            return forward_by_rows(self, users, items)
        return self.forward_per_sample(users, items)

    def forward_per_sample(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """model(users, items) as the GPU runs it: every lookup and the whole first layer per sample."""
        gmf = self.gmf_user(users) * self.gmf_item(items) if self.use_gmf else None
        first = None
        if self.use_mlp:
            x = torch.cat([self.mlp_user(users), self.mlp_item(items)], dim=-1)
            w = torch.cat([self.first_user.weight, self.first_item.weight], dim=1)
            first = F.linear(x, w, self.first_user.bias)
        return self._head(gmf, first)


class MF(nn.Module):
    """Matrix factorisation: dot(user, item) + user bias + item bias + global bias."""

    def __init__(
        self,
        n_users: int,
        n_items: int,
        factors: int = 64,
        sparse: bool = False,
        variant: str = "scalerec",
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.distinct_rows = VARIANTS[variant][0]  # MF has no per-sample node of its own
        self.user = nn.Embedding(n_users, factors, sparse=sparse)
        self.item = nn.Embedding(n_items, factors, sparse=sparse)
        self.user_bias = nn.Embedding(n_users, 1, sparse=sparse)
        self.item_bias = nn.Embedding(n_items, 1, sparse=sparse)
        self.bias = nn.Parameter(torch.zeros(()))
        nn.init.normal_(self.user.weight, 0.0, init_std)
        nn.init.normal_(self.item.weight, 0.0, init_std)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)

    def tables(self, side: str) -> list[nn.Embedding]:
        """The embedding tables of one side ("user" or "item"): the factors, then the biases."""
        return [getattr(self, side), getattr(self, f"{side}_bias")]

    def encode_users(self, users: torch.Tensor, distinct: bool = False) -> Encoding:
        factors, bias = lookup([self.user, self.user_bias], users, distinct)
        return factors, bias.squeeze(-1)

    def encode_items(self, items: torch.Tensor, distinct: bool = False) -> Encoding:
        factors, bias = lookup([self.item, self.item_bias], items, distinct)
        return factors, bias.squeeze(-1)

    def interact(self, user: Encoding, item: Encoding) -> torch.Tensor:
        return (user[0] * item[0]).sum(-1) + user[1] + item[1] + self.bias

    def score_grid(self, user: Encoding, item: Encoding) -> torch.Tensor:
        """Logits of every pair of U encoded users and I encoded items, [U, I]: one matrix product."""
        return user[0] @ item[0].T + user[1][:, None] + item[1][None, :] + self.bias

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        if users.device.type != "cuda":
            return forward_by_rows(self, users, items)
        return self.interact(self.encode_users(users), self.encode_items(items))


def table_params(name: str, n_users: int, n_items: int, factors: int, layers: tuple[int, ...]) -> int:
    """Parameters in the model's embedding tables (they dominate at scale)."""
    width = {"mf": factors + 1, "gmf": factors, "mlp": layers[0] // 2}.get(name, factors + layers[0] // 2)
    return (n_users + n_items) * width


def build_model(
    name: str,
    n_users: int,
    n_items: int,
    factors: int,
    layers: tuple[int, ...],
    dropout: float,
    sparse: bool = False,
    variant: str = "scalerec",
    init_std: float = 0.01,
) -> nn.Module:
    """The model `name` names; `variant`: how its CPU step is computed (VARIANTS; scalerec's own by default);
    `init_std`: the embeddings' initial standard deviation."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (expected {', '.join(VARIANTS)})")
    if name == "mf":
        return MF(n_users, n_items, factors, sparse, variant, init_std)
    if name not in ("neumf", "gmf", "mlp"):
        raise ValueError(f"unknown model {name!r} (expected neumf, gmf, mlp or mf)")
    gmf, mlp = name != "mlp", name != "gmf"
    return NeuMF(n_users, n_items, factors, layers, dropout, gmf, mlp, sparse, variant, init_std)
