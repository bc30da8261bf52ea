"""The CPU kernels of the models' training step and scoring.

Training on the CPU encodes each distinct user and item of a batch once (`encode_rows`, by `unique_rows`), which
makes the lookups and the first MLP layer cost per distinct row, not per sample (benchmarks/step_speed.py;
figures in benchmarks/RESULTS.md). It is the same function. The per-sample rest of NeuMF's step
(`interact_rows`) is one autograd node with a hand-written backward (`_PairHead`). On CPUs with AVX-512 the fp32
matrix products go to oneDNN's inner product (`linear`) instead of BLAS, where MKL runs its AVX2 code on AMD CPUs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scalerec.errors import UserError

Encoding = tuple[torch.Tensor | None, ...]  # None where a branch is absent


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
    encoding[index]: its backward is an index_add, much faster than advanced indexing's on the CPU."""
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
    oneDNN's kernels use it and MKL's sgemm on AMD CPUs does not; held to AVX2, oneDNN was no faster than BLAS
    (docs/performance.md). Not measured on Zen 4 or Intel CPUs, where MKL may do as well: --cpu-matmul blas."""
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
    node, faster on the CPU than a node per lookup and autograd's layer, or nn.Embedding's lookups and nn.Linear
    (benchmarks/step_speed.py's scalerec_embedding; benchmarks/RESULTS.md). A table's gradient is its
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
            # BLAS for the weight's gradient: by oneDNN the step was no faster
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
        getattr(model, "hand_backward", False)
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
                # d_h.T @ saved[k - 1], a sum over the batch's rows: by oneDNN where it pays (unlike _EncodeRows'
                # weight gradient, the step was faster so)
                d_hidden[2 * k - 2] = linear(d_h.T, saved[k - 1].T, onednn=ctx.onednn)
                d_hidden[2 * k - 1] = d_h.sum(0)
                d_h = linear(d_h, hidden[2 * k - 2].T, onednn=ctx.onednn)
            d_mlp_u, d_mlp_i = _put(d_h, u_at, ctx.rows[1]), _put(d_h, i_at, ctx.rows[3])
        d_predict_w = torch.cat(d_w)[None]
        d_bias = grad.sum().reshape(1)
        return None, None, None, d_gmf_u, d_mlp_u, d_gmf_i, d_mlp_i, d_predict_w, d_bias, *d_hidden
