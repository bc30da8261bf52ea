"""NeuMF (GMF + MLP, He et al. 2017), GMF and MLP alone, and a plain MF baseline (Rendle et al. 2020).

Each model maps (users, items) to logits and nothing else: no devices, no loss. Scoring is split into
`encode_users` (a user's embeddings through everything that depends on the user alone: for NeuMF, its half of
the first MLP layer), `encode_items` and `interact`, so that each user and each item is encoded once and their
pairs scored by gathering or broadcasting the encodings. Evaluation encodes all candidates once; training on the
CPU encodes each distinct user and item of a batch once (`encode_rows`), which makes the lookups and the first
MLP layer cost per distinct row, not per sample: at batch 4096 on ML-1M shape, 5,000 rows instead of 8,192
half-rows, and at 65536, under 10,000 instead of 131,072 (benchmarks/step_speed.py). It is the same function.
The per-sample rest of NeuMF's step (`interact_rows`) is one autograd node with a hand-written backward there.
`score_grid` scores every pair of encoded users and items at once, for full-ranking evaluation.
On CPUs with AVX-512 NeuMF's fp32 matrix products in the step and in scoring go to oneDNN's inner product
(`linear`) instead of BLAS: MKL runs its AVX2 code on AMD CPUs (190-220 GFLOP/s on 2 cores of a Zen 5 EPYC,
against 400-480 for oneDNN), so the step ran 1.2-1.4x faster (benchmarks/step_speed.py: scalerec against
scalerec_blas).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scalerec.errors import UserError

Encoding = tuple[torch.Tensor | None, ...]  # None where a branch is absent


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
    ) -> None:
        super().__init__()
        if not (gmf or mlp):
            raise ValueError("NeuMF needs the GMF branch, the MLP branch, or both")
        self.use_gmf, self.use_mlp, self.dropout = gmf, mlp, dropout
        self.hand_backward = True  # interact_rows' _PairHead where it applies; False: autograd's (benchmarks)
        self.distinct_rows = True  # encode_rows by _EncodeRows; False: nn.Embedding and nn.Linear (benchmarks)
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
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Embeddings N(0, 0.01); linear layers Glorot uniform with zero biases (as in the NCF paper's code)."""
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, 0.01)
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

    def encode_users(self, users: torch.Tensor, distinct: bool = False) -> Encoding:
        """The users' encodings; distinct=True: the users are distinct and ascending (a cheaper backward)."""
        return self._encode("user", users, distinct)

    def encode_items(self, items: torch.Tensor, distinct: bool = False) -> Encoding:
        return self._encode("item", items, distinct)

    def _encode(self, side: str, ids: torch.Tensor, distinct: bool) -> Encoding:
        tables = [
            getattr(self, f"{branch}_{side}") for branch, used in (("gmf", self.use_gmf), ("mlp", self.use_mlp)) if used
        ]
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

    def score_grid(self, user: Encoding, item: Encoding, pairs_per_tile: int = 8192) -> torch.Tensor:
        """Logits of every pair of U encoded users and I encoded items, [U, I]: interact() on all pairs. The GMF
        branch with its share of the prediction layer is one matrix product ((u * w) @ i.T); the MLP branch runs
        on tiles of about `pairs_per_tile` pairs, so that its activations stay in cache."""
        n_users, n_items = len(next(t for t in user if t is not None)), len(next(t for t in item if t is not None))
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

    def __init__(self, n_users: int, n_items: int, factors: int = 64, sparse: bool = False) -> None:
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.distinct_rows = True  # as NeuMF's
        self.user = nn.Embedding(n_users, factors, sparse=sparse)
        self.item = nn.Embedding(n_items, factors, sparse=sparse)
        self.user_bias = nn.Embedding(n_users, 1, sparse=sparse)
        self.item_bias = nn.Embedding(n_items, 1, sparse=sparse)
        self.bias = nn.Parameter(torch.zeros(()))
        nn.init.normal_(self.user.weight, 0.0, 0.01)
        nn.init.normal_(self.item.weight, 0.0, 0.01)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)

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


def unique_rows(ids: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the distinct ids, ascending; each entry's position among them). Ids are rows of a table of n: a mark per
    row finds them in O(n + len(ids)) with no sort, faster than torch.unique on the CPU up to ML-20M's tables;
    for a table much larger than the batch, torch.unique's sort is cheaper."""
    if n > 64 * len(ids):
        return torch.unique(ids, return_inverse=True)
    seen = torch.zeros(n, dtype=torch.bool, device=ids.device)
    seen[ids] = True
    rows = seen.nonzero().squeeze(1)
    position = torch.empty(n, dtype=torch.int64, device=ids.device)
    position[rows] = torch.arange(len(rows), device=ids.device)
    return rows, position.index_select(0, ids)


def gather(encoding: Encoding, index: torch.Tensor | None) -> Encoding:
    """Each sample's rows of an encoding of distinct rows (None: the encoding as it is). index_select, not
    encoding[index]: its backward is an index_add, much faster than advanced indexing's on the CPU (measured: the
    whole step at ML-1M shape and batch 4096 ran 1.4x faster)."""
    return tuple(None if t is None else _take(t, index) for t in encoding)


def encode_rows(model: nn.Module, users: torch.Tensor, items: torch.Tensor):
    """((encoding of each distinct user, each sample's position in it), (the same for items))."""
    u, u_at = unique_rows(users, model.n_users)
    i, i_at = unique_rows(items, model.n_items)
    distinct = model.distinct_rows
    return (model.encode_users(u, distinct), u_at), (model.encode_items(i, distinct), i_at)


def lookup(
    tables: list[nn.Embedding],
    ids: torch.Tensor,
    distinct: bool = False,
    first: nn.Linear | None = None,
    onednn: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Each table's rows of ids, the last table's through `first` where given (NeuMF's MLP table and its half of
    the first layer). With distinct=True, for ids that are distinct and ascending (unique_rows'), as one autograd
    node (_EncodeRows); the layer stays autograd's under autocast, whose casts the node would have to repeat.
    `onednn`: the layer's products by oneDNN where no autograd needs them (`linear`)."""
    by_rows = distinct and torch.is_grad_enabled()
    fused = by_rows and first is not None and not torch.is_autocast_enabled(ids.device.type)
    if by_rows:
        layer = (first.weight, first.bias) if fused else (None, None)
        out = list(_EncodeRows.apply(ids, tables[0].sparse, onednn, *layer, *(t.weight for t in tables)))
    else:
        out = [t(ids) for t in tables]
    if first is not None and not fused:
        out[-1] = linear(out[-1], first.weight, first.bias, onednn)
    return tuple(out)


def onednn_available() -> bool:
    """Whether this PyTorch has oneDNN's inner product for dense tensors (`linear`)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def set_cpu_matmul(model: nn.Module, choice: str) -> None:
    """--cpu-matmul: onednn or blas places the model's CPU products (`linear`); auto keeps onednn_pays()'s choice."""
    if choice == "auto" or not hasattr(model, "onednn"):  # MF has no products to place
        return
    if choice == "onednn" and not onednn_available():
        raise UserError("--cpu-matmul onednn: this PyTorch has no oneDNN (use --cpu-matmul blas or auto)")
    model.onednn = choice == "onednn"


def onednn_pays() -> bool:
    """Whether the CPU's fp32 matrix products should go to oneDNN rather than BLAS: on CPUs with AVX-512, where
    oneDNN's kernels use it and MKL's sgemm on AMD CPUs does not (a Zen 5 EPYC's 2 cores: 350-480 against 160-220
    GFLOP/s; with oneDNN held to AVX2 there, ONEDNN_MAX_CPU_ISA=AVX2, the step ran at 0.99x BLAS's). Not measured on
    Zen 4 or Intel CPUs, where MKL may do as well: --cpu-matmul blas."""
    return onednn_available() and torch.backends.cpu.get_cpu_capability() == "AVX512"


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, onednn: bool = False, relu: bool = False
) -> torch.Tensor:
    """x @ weight.T + bias (then ReLU): by oneDNN's inner product (PyTorch's own, as its CPU compiler calls it) for
    fp32 CPU tensors where `onednn`, else BLAS. weight may be a transposed view: the products of a backward, d_y @ W,
    are linear(d_y, W.T). oneDNN's op has no autograd, so a product autograd must see goes to BLAS, as do empty
    tensors, which oneDNN refuses."""
    cpu_fp32 = x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    tracked = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if onednn and cpu_fp32 and not tracked and x.numel() and weight.numel():
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu" if relu else "none", [], "")
    y = F.linear(x, weight, bias)
    return y.relu_() if relu else y


class _EncodeRows(torch.autograd.Function):
    """Tables' rows for distinct, ascending rows, the last table's through a linear layer where given, as one autograd
    node: on the CPU a step at ML-1M shape and batch 4096 ran 1.05x faster than with a node per lookup and
    autograd's layer (interleaved in one process; benchmarks/RESULTS.md), and 1.03x faster than
    benchmarks/step_speed.py's scalerec_embedding (nn.Embedding's lookups and nn.Linear). A table's gradient is its
    rows' own, put in place with nothing to add up: for a dense table a zero table with the rows copied in
    (nn.Embedding's backward adds them, with a count per row), for a sparse one the rows as they are, which
    RowwiseAdam sees need no coalescing (nn.Embedding's would be sorted and summed there)."""

    @staticmethod
    def forward(ctx, rows, sparse, onednn, weight, bias, *tables):
        out = [t.index_select(0, rows) for t in tables]
        saved = [rows]
        if weight is not None:
            saved += [out[-1], weight]
            out[-1] = linear(out[-1], weight, bias, onednn)
        ctx.save_for_backward(*saved)
        ctx.sparse, ctx.onednn, ctx.shapes = sparse, onednn, [t.shape for t in tables]
        return tuple(out)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        rows, *layer = ctx.saved_tensors
        grads, needs = list(grads), ctx.needs_input_grad
        d_weight = d_bias = None
        if layer:
            x, weight = layer
            # BLAS for the weight's gradient: by oneDNN the step at ML-1M shape and batch 4096 ran 0.99x as fast
            d_weight = grads[-1].T @ x if needs[3] else None
            d_bias = grads[-1].sum(0) if needs[4] else None
            grads[-1] = linear(grads[-1], weight.T, onednn=ctx.onednn)
        tables = zip(grads, ctx.shapes, needs[5:])
        return (
            None,
            None,
            None,
            d_weight,
            d_bias,
            *(_rows_grad(g, rows, n, ctx.sparse) if need else None for g, n, need in tables),
        )


def _rows_grad(grad: torch.Tensor, rows: torch.Tensor, shape: torch.Size, sparse: bool) -> torch.Tensor:
    """The gradient of a table of `shape` whose distinct, ascending `rows` got `grad`."""
    if sparse:
        # coalesced by construction (rows distinct and ascending); checking it would cost a sort. Autograd's
        # accumulation drops the flag, so RowwiseAdam checks the order itself.
        return torch.sparse_coo_tensor(rows[None], grad, shape, is_coalesced=True, check_invariants=False)
    return grad.new_zeros(shape).index_copy_(0, rows, grad)


def forward_by_rows(model: nn.Module, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """model(users, items), encoding each distinct user and item once and gathering per sample."""
    (user, u_at), (item, i_at) = encode_rows(model, users, items)
    return interact_rows(model, user, item, u_at, i_at)


def interact_rows(
    model: nn.Module, user: Encoding, item: Encoding, u_at: torch.Tensor | None, i_at: torch.Tensor | None
) -> torch.Tensor:
    """model.interact on each sample's rows of the encodings (positions u_at and i_at; None: the encodings are
    per sample already). NeuMF on the CPU in fp32 without dropout runs it as one autograd node with a hand-written
    backward (`_PairHead`); anything else as model.interact on the gathered rows."""
    tensors = [t for t in user + item if t is not None]
    fusable = (
        isinstance(model, NeuMF)
        and model.hand_backward
        and not (model.training and model.dropout > 0)
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not torch.is_autocast_enabled("cpu")
    )
    if not fusable:
        return model.interact(gather(user, u_at), gather(item, i_at))
    hidden = [t for layer in model.hidden for t in (layer.weight, layer.bias)] if model.use_mlp else []
    return _PairHead.apply(u_at, i_at, model.onednn, *user, *item, model.predict.weight, model.predict.bias, *hidden)


def _take(t: torch.Tensor, at: torch.Tensor | None) -> torch.Tensor:
    return t if at is None else t.index_select(0, at)


def _put(rows: torch.Tensor, at: torch.Tensor | None, n: int) -> torch.Tensor:
    """The gradient of _take(t, at) for a t of n rows: each sample's row added into its row of t."""
    return rows if at is None else rows.new_zeros(n, rows.shape[1]).index_add_(0, at, rows)


class _PairHead(torch.autograd.Function):
    """NeuMF.interact on gathered rows (GMF product, the MLP from its first layer's two halves, the prediction
    layer) as one autograd node. The same function and gradients as autograd's; faster on the CPU because it
    allocates fewer per-sample tensors and makes fewer passes over them: the halves are gathered into one buffer,
    ReLUs and their backward run in place, and the prediction layer is two matrix-vector products, not a
    concatenation and a one-column matrix product (benchmarks/step_speed.py: scalerec_blas against
    scalerec_autograd)."""

    @staticmethod
    def forward(ctx, u_at, i_at, onednn, gmf_u, mlp_u, gmf_i, mlp_i, predict_w, predict_b, *hidden):
        w, logits, saved = predict_w[0], predict_b, []
        if gmf_u is not None:
            g_u, g_i = _take(gmf_u, u_at), _take(gmf_i, i_at)
            gmf = g_u * g_i
            logits = torch.addmv(logits, gmf, w[: gmf.shape[1]])
            saved += [g_u, g_i, gmf]
        if mlp_u is not None:
            h = _take(mlp_u, u_at)
            h = (h.add_(_take(mlp_i, i_at)) if u_at is not None else h + _take(mlp_i, i_at)).relu_()
            saved.append(h)
            for k in range(0, len(hidden), 2):
                h = linear(h, hidden[k], hidden[k + 1], onednn, relu=True)
                saved.append(h)
            logits = torch.addmv(logits, h, w[w.shape[0] - h.shape[1] :])
        ctx.save_for_backward(u_at, i_at, predict_w, *hidden, *saved)
        ctx.gmf, ctx.mlp, ctx.n_hidden, ctx.onednn = gmf_u is not None, mlp_u is not None, len(hidden), onednn
        ctx.rows = [None if t is None else len(t) for t in (gmf_u, mlp_u, gmf_i, mlp_i)]
        return logits

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        u_at, i_at, predict_w, *rest = ctx.saved_tensors
        n_hidden = ctx.n_hidden  # weights and biases
        hidden, saved = rest[:n_hidden], rest[n_hidden:]
        w, grad = predict_w[0], grad.contiguous()
        d_gmf_u = d_mlp_u = d_gmf_i = d_mlp_i = None
        d_w, d_hidden = [], [None] * n_hidden
        if ctx.gmf:
            g_u, g_i, gmf = saved[:3]
            saved, w_gmf = saved[3:], w[: gmf.shape[1]]
            d_w.append(gmf.T.mv(grad))
            d_gmf_u = _put(torch.mul(g_i, w_gmf).mul_(grad[:, None]), u_at, ctx.rows[0])
            d_gmf_i = _put(torch.mul(g_u, w_gmf).mul_(grad[:, None]), i_at, ctx.rows[2])
        if ctx.mlp:
            d_w.append(saved[-1].T.mv(grad))
            d_h = torch.outer(grad, w[w.shape[0] - saved[-1].shape[1] :])
            for k in range(len(saved) - 1, -1, -1):
                torch.ops.aten.threshold_backward.grad_input(d_h, saved[k], 0, grad_input=d_h)  # ReLU, in place
                if k == 0:
                    break
                # d_h.T @ saved[k - 1], a sum over the batch's rows: by oneDNN the step at ML-1M shape and batch
                # 4096 ran 1.03x faster than by BLAS (unlike _EncodeRows' weight gradient)
                d_hidden[2 * k - 2] = linear(d_h.T, saved[k - 1].T, onednn=ctx.onednn)
                d_hidden[2 * k - 1] = d_h.sum(0)
                d_h = linear(d_h, hidden[2 * k - 2].T, onednn=ctx.onednn)
            d_mlp_u, d_mlp_i = _put(d_h, u_at, ctx.rows[1]), _put(d_h, i_at, ctx.rows[3])
        d_predict_w = torch.cat(d_w)[None]
        d_bias = grad.sum().reshape(1)
        return None, None, None, d_gmf_u, d_mlp_u, d_gmf_i, d_mlp_i, d_predict_w, d_bias, *d_hidden


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
) -> nn.Module:
    if name == "mf":
        return MF(n_users, n_items, factors, sparse)
    if name not in ("neumf", "gmf", "mlp"):
        raise ValueError(f"unknown model {name!r} (expected neumf, gmf, mlp or mf)")
    return NeuMF(n_users, n_items, factors, layers, dropout, gmf=name != "mlp", mlp=name != "gmf", sparse=sparse)
