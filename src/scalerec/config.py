"""Run configuration: dataclasses with a docstring per field, the one source of defaults.

Precedence is defaults < config file (TOML or YAML) < command line. The CLI builds its options from these
fields (name, type, docstring), so a new field is a new flag with no other edit. The resolved config is saved
with every run.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import math
import os
import textwrap
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from scalerec.errors import OptionError

MAX_SEED = 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38


def check_finite(section: object) -> None:
    """ValueError where a float field of a config section is inf or nan (`--lr inf`, YAML's .inf): no run is
    meaningful with one, and some would train at lr 0 to the end without a word."""
    for f in dataclasses.fields(section):  # type: ignore[arg-type]
        value = getattr(section, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number, got {value}")


def home(path: str | None) -> str | None:
    """~ expanded, as a shell does on the command line (a config file's paths get no shell)."""
    return os.path.expanduser(path) if path else path


@dataclass
class DataConfig:
    dataset: Literal[
        "ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-latest-small", "ml-latest", "ncf", "synthetic"
    ] = "ml-100k"
    """Which data: a MovieLens release (its official zip fetched on first use and checked, unless --data names a
    local copy), ncf (the NCF paper's files, give --data PREFIX), synthetic (generated, with a planted preference
    structure)."""
    data: str | None = None
    """A local file instead of the download: a MovieLens ratings file (u.data, ratings.dat, ratings.csv, a RecBole
    .inter, a zip or folder), or any CSV, TSV or Parquet table (see --user-col); for --dataset ncf the prefix of
    NAME.train.rating / NAME.test.rating / NAME.test.negative."""
    user_col: str | None = None
    """Any table (CSV, TSV or Parquet with a header): the user id column. Without it, a column with a usual name
    (user, user_id, userId) is used."""
    item_col: str | None = None
    """Any table: the item id column (default: item, item_id, movieId, ...)."""
    time_col: str | None = None
    """Any table: the time column, numbers or dates (default: timestamp, time, ts; without one, each user's
    held-out item is drawn at random with --data-seed)."""
    rating_col: str | None = None
    """Any table: the rating column, for --min-rating (default: rating)."""
    sep: str | None = None
    """Any table: the field separator (default: tab for .tsv, else guessed from the header line)."""
    min_rating: float | None = None
    """Keep only rows whose rating is at least this as positives (default: every row is a positive)."""
    min_user_interactions: int = 2
    """k-core: drop users with fewer distinct items than this, and items below --min-item-interactions,
    repeatedly until none is left (2: only users that leave-one-out cannot split)."""
    min_item_interactions: int = 1
    """k-core: drop items with fewer users than this (1: every item stays a candidate)."""
    data_dir: str | None = None
    """Folder for downloaded and cached data (default: $SCALEREC_DATA_DIR, else $XDG_CACHE_HOME/scalerec,
    else ~/.cache/scalerec)."""
    eval_negatives: int = 100
    """Sampled negatives per test user for evaluation (100 by default, 99 for the NCF paper's protocol).
    Ignored for --dataset ncf with a .test.negative file, whose negatives are used as they are."""
    valid: bool | None = None
    """Hold out each user's second-latest interaction as a validation item, on which the best epoch is chosen
    (default: on, except for the NCF paper's files, whose protocol has none). Users with fewer than 3 interactions
    keep a test item only."""
    data_seed: int = 0
    """Seed for the evaluation negatives and the synthetic data, fixed apart from the training seed so that
    runs with different training seeds are scored on the same candidates."""
    synthetic_users: int = 2000
    """Synthetic data: number of users."""
    synthetic_items: int = 1000
    """Synthetic data: number of items."""
    synthetic_interactions: int = 30
    """Synthetic data: mean interactions per user (at least 2 each)."""

    def __post_init__(self) -> None:
        check_finite(self)
        self.data, self.data_dir = home(self.data), home(self.data_dir)
        if self.eval_negatives < 1:
            raise ValueError(f"eval_negatives must be at least 1, got {self.eval_negatives}")
        if self.dataset == "ncf" and not self.data:
            raise ValueError("--dataset ncf needs --data PREFIX (the path before .train.rating)")
        if self.synthetic_users < 2 or self.synthetic_items < 4 or self.synthetic_interactions < 2:
            raise ValueError("synthetic sizes must be at least 2 users, 4 items and 2 interactions per user")
        if self.min_user_interactions < 2:
            raise ValueError(
                f"min_user_interactions must be at least 2 (to train and to test), got {self.min_user_interactions}"
            )
        if self.min_item_interactions < 1:
            raise ValueError(f"min_item_interactions must be at least 1, got {self.min_item_interactions}")
        if not 0 <= self.data_seed <= MAX_SEED:
            raise ValueError(f"data_seed must be in [0, 2**63), got {self.data_seed}")
        if self.sep is not None and self.sep not in ("\\t", "tab") and len(self.sep.encode()) != 1:
            raise ValueError(
                f"sep must be one ASCII character (or tab), got {self.sep!r}; '::'-separated files such as ratings.dat "
                "are read without --sep"
            )


@dataclass
class ModelConfig:
    model: Literal["neumf", "gmf", "mlp", "mf"] = "neumf"
    """Model: neumf (GMF + MLP fused by a linear layer), gmf, mlp, or mf (dot product plus biases)."""
    factors: int = 64
    """Embedding size of the GMF branch (and of mf)."""
    layers: tuple[int, ...] = (256, 256, 128, 64)
    """MLP layer sizes; the first is the concatenated user+item MLP embedding, so each is half of it."""
    dropout: float = 0.0
    """Dropout probability after each hidden MLP layer."""
    init_std: float = 0.01
    """Standard deviation of the embeddings' normal initialisation (the NCF paper's code: 0.01; Rendle et al.'s
    MF: 0.1)."""
    init_from: tuple[str, ...] = ()
    """Run folders whose best models start this model: each tensor of the same name and shape, from the first run
    that has it (NeuMF from a GMF and an MLP run: its prediction layer 0.5 x GMF's | 0.5 x MLP's). The runs must
    have trained on this run's data and split (default: none)."""
    pretrain: bool = False
    """NeuMF as the NCF paper's best: train GMF, then MLP (--pretrain-optimizer, --pretrain-lr, --pretrain-epochs;
    the run's --l2 and --decay), each in its own folder inside this run's (gmf/, mlp/), then NeuMF from their best
    models as --init-from does. One run: --resume continues it in the stage where it stopped."""
    pretrain_optimizer: Literal["adam", "sgd", "lars", "lamb"] = "adam"
    """--pretrain: the GMF and MLP stages' optimizer (the paper's: Adam)."""
    pretrain_lr: float = 0.001
    """--pretrain: the GMF and MLP stages' learning rate (the paper's: 0.001)."""
    pretrain_epochs: int | None = None
    """--pretrain: the GMF and MLP stages' epochs (default: --epochs)."""

    def __post_init__(self) -> None:
        check_finite(self)
        self.init_from = tuple(str(x) for x in self.init_from)
        if self.pretrain and self.model != "neumf":
            raise ValueError(f"pretrain trains GMF and MLP for NeuMF; the model is {self.model}")
        if self.pretrain and self.init_from:
            raise ValueError("pretrain starts NeuMF from its own GMF and MLP stages; not with init_from")
        if not self.pretrain_lr > 0:
            raise ValueError(f"pretrain_lr must be > 0, got {self.pretrain_lr}")
        if self.pretrain_epochs is not None and self.pretrain_epochs < 1:
            raise ValueError(f"pretrain_epochs must be at least 1, got {self.pretrain_epochs}")
        self.layers = tuple(int(x) for x in self.layers)
        if self.factors < 1:
            raise ValueError(f"factors must be at least 1, got {self.factors}")
        if len(self.layers) < 2 or any(x < 1 for x in self.layers) or self.layers[0] % 2:
            raise ValueError(
                f"layers must be two or more positive sizes (the first even: the user+item embedding), "
                f"got {list(self.layers)}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")


@dataclass
class OptimConfig:
    optimizer: Literal["adam", "sgd", "lars", "lamb"] = "adam"
    """Optimizer: adam, sgd (with --momentum, --nesterov), lars (SGD with a layer-wise trust ratio, You et al.
    2017) or lamb (Adam with a layer-wise trust ratio, You et al. 2019)."""
    lr: float = 0.002
    """Learning rate (the peak, after warmup). With --lr-scaling it is computed from --base-lr instead."""
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    """Rule that scales --base-lr from --base-batch to --batch-size: linear (Goyal et al. 2017), sqrt, none."""
    base_lr: float | None = None
    """Learning rate known to work at --base-batch (default: --lr)."""
    base_batch: int | None = None
    """Batch size at which --base-lr works (default: --batch-size, i.e. no scaling)."""
    warmup: Literal["none", "exponential", "linear"] = "none"
    """Warmup: exponential (the GHC 2019 notebook's, from 1% of the lr) or linear, over --warmup-epochs."""
    warmup_epochs: float = 0.1
    """Length of the warmup in epochs (fractions allowed)."""
    decay: Literal["none", "cosine", "step", "poly"] = "none"
    """Decay after warmup to the last step: cosine, step (x0.1 at 50% and 75%), poly (power 2), none."""
    momentum: float = 0.9
    """SGD and LARS momentum (the notebook uses 0.9)."""
    nesterov: bool = False
    """SGD and LARS: use Nesterov momentum."""
    weight_decay: float = 0.0
    """L2 weight decay (LARS and LAMB: on the tensors that adapt, never on biases)."""
    l2: float = 0.0
    """L2 regularisation of the embedding rows each sample uses (factors and biases): l2/2 x their squared norms
    added to the sample's loss, so that SGD shrinks a row for each sample that uses it, as Rendle et al. 2020's
    MF does (--weight-decay shrinks every row at every step). The logged loss is the cross-entropy alone."""
    trust_coefficient: float = 0.001
    """LARS trust coefficient eta: the layer-wise lr is eta * ||w|| / ||grad||."""
    adapt_embeddings: bool | None = None
    """LARS and LAMB: give embedding tables a trust ratio and weight decay like weight matrices (else plain
    SGD/Adam steps). Default: yes for LARS, no for LAMB (docs/large-batches.md says why)."""
    sparse_embeddings: bool | None = None
    """Embedding tables get sparse gradients and Adam updates only the rows a batch touched (lazy Adam), instead
    of every row at every step. Default: on the CPU, yes for adam where the tables hold 2,000 parameters or more
    per sample of a batch (large tables, small batches: where rows were measured faster); for the other
    optimizers, dense. CPU only: a GPU refuses it (dense fused Adam is cheap there, and sparse rows sync the host)."""

    def __post_init__(self) -> None:
        check_finite(self)
        if not self.lr > 0:
            raise ValueError(f"Invalid learning rate: {self.lr} (must be > 0)")
        if self.base_lr is not None and not self.base_lr > 0:
            raise ValueError(f"Invalid base learning rate: {self.base_lr} (must be > 0)")
        for name in ("lr", "base_lr"):  # the weights are float32 at most: a larger lr makes them inf at once
            if (value := getattr(self, name)) is not None and value > FLOAT32_MAX:
                raise ValueError(f"{name} must be at most float32's largest number, 3.4e38, got {value:g}")
        if self.base_batch is not None and self.base_batch < 1:
            raise ValueError(f"base_batch must be at least 1, got {self.base_batch}")
        if not self.warmup_epochs > 0:
            raise ValueError(f"warmup_epochs must be > 0, got {self.warmup_epochs}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not self.l2 >= 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}")
        if not self.trust_coefficient > 0:
            raise ValueError(f"trust_coefficient must be > 0, got {self.trust_coefficient}")
        if self.sparse_embeddings and self.optimizer != "adam":
            raise ValueError(f"sparse_embeddings needs --optimizer adam, not {self.optimizer}")
        if self.nesterov and (self.optimizer not in ("sgd", "lars") or self.momentum == 0):
            raise ValueError("nesterov needs --optimizer sgd or lars and a momentum > 0")


def parse_batch_schedule(text: str) -> list[tuple[int, int]]:
    """ "0:1024,2:4096" -> [(0, 1024), (2, 4096)]: (first epoch, batch) of each phase; ValueError saying what is
    wrong."""
    phases = []
    for part in str(text).split(","):
        epoch, _, batch = part.strip().partition(":")
        try:
            phases.append((int(epoch), int(batch)))
        except ValueError:
            raise ValueError(f"batch_schedule: {part.strip()!r} is not EPOCH:BATCH (e.g. 0:1024,2:4096)") from None
    if phases[0][0] != 0:
        raise ValueError(f"batch_schedule must start at epoch 0, got {text!r}")
    if any(b < 1 for _, b in phases) or any(e2 <= e1 for (e1, _), (e2, _) in zip(phases, phases[1:])):
        raise ValueError(f"batch_schedule: batches of at least 1, at increasing epochs, got {text!r}")
    return phases


@dataclass
class TrainConfig:
    epochs: int = 20
    """Number of training epochs."""
    batch_size: int | Literal["max"] = 1024
    """Training samples (positives + negatives) per step, or max: the largest batch that fits the device memory
    (on the CPU, --memory-budget-gb), found by a short search before training."""
    batch_schedule: str | None = None
    """Grow the batch at epoch boundaries instead of decaying the lr (Smith et al. 2017): "EPOCH:BATCH,...", e.g.
    "0:1024,2:4096,4:16384" (from epoch 0 at 1024, from 2 at 4096, from 4 at 16384); it replaces --batch-size. With
    --lr-scaling, each phase's lr is scaled to its batch."""
    memory_budget_gb: float | None = None
    """--batch-size max: the memory a run may use, in GB (default: the whole GPU; on the CPU, 80% of the memory
    available at start)."""
    micro_batch: int | None = None
    """Compute each batch in slices of this many samples that add up to the same gradient and one step, so that
    activations stay in the CPU's cache or fit the device memory (default: 8192 on the CPU for larger batches,
    none on a GPU)."""
    negatives: int = 4
    """Train negatives drawn per positive, fresh every epoch."""
    shuffle: Literal["samples", "groups"] = "samples"
    """Epoch order: samples (every sample shuffled on its own, as in the NCF paper's code) or groups (the
    positives shuffled, each followed by its own negatives: a batch holds at most 1 / (1 + negatives) as many
    distinct users, which the CPU step encodes once each: a faster step, a little less accuracy; see
    docs/performance.md)."""
    seed: int = 0
    """Seed for initialisation, train negatives and shuffling; the same seed gives identical metrics on CPU."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Mixed precision: bf16, or fp16 with dynamic loss scaling. On a CPU bf16 pays only with AMX or AVX-512 BF16."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Training device: auto picks cuda when available."""
    threads: int | None = None
    """CPU threads for PyTorch (default: the CPUs the process may use, by its affinity mask and cgroup CPU quota,
    less those other processes keep busy: measured before the first epoch and after each). Fixed, a seed gives the
    same metrics bit for bit."""
    cpu_matmul: Literal["auto", "onednn", "blas"] = "auto"
    """The CPU step's and scoring's fp32 matrix products (NeuMF's): by oneDNN's inner product or by BLAS (MKL).
    auto: oneDNN on CPUs with AVX-512 (MKL runs AVX2 code on AMD CPUs, where oneDNN's step was faster), BLAS
    elsewhere. The two round differently, so a seed's metrics differ between them."""
    matmul_precision: Literal["auto", "highest", "high"] = "auto"
    """fp32 matrix products, as torch.set_float32_matmul_precision: highest (full fp32) or high (TF32 on NVIDIA
    GPUs since Ampere: a 10-bit mantissa in the products' inputs, several times the fp32 rate). auto: high on a GPU,
    highest on the CPU. The log says which a run used."""
    grad_sync: Literal["auto", "ddp", "flat"] = "auto"
    """Data-parallel runs (torchrun): how the processes' gradients are summed. ddp: by PyTorch's
    DistributedDataParallel, in buckets all-reduced while the backward runs; flat: in one all-reduce after the
    backward; auto: ddp on GPUs, flat on the CPU, where it measured faster (docs/distributed.md). Micro-batches
    are always summed flat (their slices do not go through the model's forward)."""
    patience: int | None = None
    """Stop after this many epochs without a better validation metric, the one that picks the best epoch
    (default: none, every epoch is trained)."""
    output: str | None = None
    """Run folder for config.json and metrics.jsonl (default: runs/<time>-<data>-<model>, the data named by the
    dataset or the --data file)."""
    tensorboard: bool = False
    """Write TensorBoard logs under the run folder (its tensorboard/ folder): the loss and lr per step, and per
    epoch the loss, the metrics and samples/s (needs the tensorboard package: pip install 'scalerec[tensorboard]')."""
    checkpoint: bool = True
    """Save checkpoint.pt in the run folder after every epoch (weights, optimizer and random state): what
    `scalerec train --resume RUN` continues from and `scalerec recommend RUN` recommends with."""

    def __post_init__(self) -> None:
        check_finite(self)
        self.output = home(self.output)
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size != "max" and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)):
            raise ValueError(f"batch_size must be an integer or max, got {self.batch_size!r}")
        if self.batch_size != "max" and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.batch_schedule is not None:
            parse_batch_schedule(self.batch_schedule)  # checked here, once
            if self.batch_size == "max":
                raise ValueError("batch_schedule gives each epoch's batch: not with batch_size max")
        if self.memory_budget_gb is not None and not self.memory_budget_gb > 0:
            raise ValueError(f"memory_budget_gb must be > 0, got {self.memory_budget_gb}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ValueError(f"micro_batch must be at least 1, got {self.micro_batch}")
        if self.negatives < 0:
            raise ValueError(f"negatives must be >= 0, got {self.negatives}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be at least 1, got {self.patience}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")


# --eval: the protocols each epoch runs; the last one picks the best epoch.
PROTOCOLS = {"sampled": ("sampled",), "full": ("full",), "both": ("sampled", "full")}


@dataclass
class EvalConfig:
    eval: Literal["sampled", "full", "both"] = "sampled"
    """Evaluation protocol: sampled (each test item ranked among --eval-negatives sampled items, as in the NCF
    paper), full (among all items the user did not train on, with Recall@K: exact, and slower), or both (the best
    epoch is then picked by full ranking). Every metric name starts with its protocol: sampled_HR@10, full_HR@10."""
    topk: tuple[int, ...] = (10,)
    """Cut-offs K for HR@K and NDCG@K; the first one picks the best epoch."""
    eval_batch_size: int | None = None
    """Test users scored per batch of sampled evaluation (default: 16 on the CPU, whose small batches keep the
    candidates' activations in cache; on a GPU, thousands, as many as fill it)."""
    select_on: Literal["valid", "test"] = "valid"
    """Which split's metric picks the best epoch: valid (the validation items; the test metrics are reported at
    that epoch) or test (the test items themselves, as the NCF paper and the notebook do). Without a validation
    split, test."""

    def __post_init__(self) -> None:
        self.topk = tuple(int(k) for k in self.topk)
        if not self.topk or min(self.topk) < 1:
            raise ValueError(f"topk must be one or more positive integers, got {list(self.topk)}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be at least 1, got {self.eval_batch_size}")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:  # checks that span sections
        o = self.optim
        if self.train.batch_size == "max" and o.lr_scaling != "none" and o.base_batch is None:
            raise ValueError("--batch-size max with --lr-scaling needs --base-batch (the batch --base-lr is for)")
        if o.adapt_embeddings is not None and o.optimizer not in ("lars", "lamb"):
            raise ValueError(f"adapt_embeddings applies to --optimizer lars or lamb, not {o.optimizer}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_toml(self, header: str = "") -> str:
        """The options that differ from the defaults, less --output, as a TOML file that --config reads back
        into this same Config; `header`: comment lines above them."""
        defaults, lines = Config().to_dict(), [f"# {line}" for line in header.splitlines()]
        for section, values in self.to_dict().items():
            changed = [(k, v) for k, v in values.items() if v != defaults[section][k] and k != "output"]
            if changed:
                lines += ["", f"[{section}]", *(f"{k} = {_toml_value(v)}" for k, v in changed)]
        return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(value: Any) -> str:
    """A TOML literal for an option's value; never None, which every option that takes it has as its default."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # a TOML basic string: JSON's escapes are TOML's; TOML also escapes DEL, and takes any other character as is
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


# Section name -> its dataclass, e.g. "optim" -> OptimConfig.
SECTIONS: dict[str, type] = {name: hint for name, hint in typing.get_type_hints(Config).items()}


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, read from its source (used as the CLI help)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def field_owner() -> dict[str, str]:
    """Field name -> section name; field names are unique across sections so flags stay flat."""
    owner: dict[str, str] = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.name not in owner, f"duplicate config field {f.name}"
            owner[f.name] = section
    return owner


def load_mapping(path: Path) -> dict[str, Any]:
    """The top-level table of a TOML or YAML file; OptionError naming the file for any problem."""
    if not path.is_file():
        raise OptionError(f"{path}: config file not found" if not path.exists() else f"{path}: not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a BOM that a Windows editor wrote is dropped
    except UnicodeDecodeError as e:
        raise OptionError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            raw = _yaml_load(text)
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            raw = tomllib.loads(text)
    except ModuleNotFoundError as e:
        raise OptionError(f"{path}: reading YAML needs PyYAML (pip install 'scalerec[yaml]')") from e
    except Exception as e:  # the parsers' own errors carry the line and column; keep them on one line
        kind = "YAML" if path.suffix.lower() in (".yaml", ".yml") else "TOML"
        raise OptionError(f"{path}: not a valid {kind} file: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise OptionError(f"{path}: expected a table of options at the top level")
    return raw


def _yaml_load(text: str) -> Any:
    """yaml.safe_load, refusing a key given twice in one mapping (PyYAML keeps the last silently; TOML refuses)."""
    import yaml  # optional dependency, only for YAML config files

    class UniqueKeys(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                if key in first:
                    raise ValueError(f"line {line}: {key!r} given twice in one table (first on line {first[key]})")
                first[key] = line
            return super().construct_mapping(node, deep)

    return yaml.load(text, Loader=UniqueKeys) or {}  # a SafeLoader: plain data only


def read_config_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a TOML or YAML file into {section: {field: value}}; sections are optional in the file."""
    path = Path(path)
    return overrides_from_mapping(load_mapping(path), path)


def overrides_from_mapping(raw: dict[str, Any], path: Path, sections_only: bool = False) -> dict[str, dict[str, Any]]:
    """{section: {field: value}} from a file's table, each value checked against its field's type; options at the
    top level or in their sections (only in sections where `sections_only`: a run's config.json)."""
    owner = field_owner()
    out: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    if sections_only and isinstance(raw.get("data"), dict) and "valid" not in raw["data"]:
        raw = {**raw, "data": {**raw["data"], "valid": False}}  # a run made before --valid existed had none
    for key, value in raw.items():
        key = str(key).replace("-", "_")
        if key in SECTIONS and (isinstance(value, dict) or key not in owner or sections_only):
            if not isinstance(value, dict):
                raise OptionError(f"{path}: section '{key}' is {value!r}, expected a table of options")
            for k, v in value.items():
                k = str(k).replace("-", "_")
                if owner.get(k) != key:
                    raise OptionError(f"{path}: unknown option '{k}' in section [{key}]")
                if k in out[key]:
                    raise OptionError(f"{path}: option '{k}' given twice (at the top level and in [{key}])")
                out[key][k] = _coerce(path, k, typing.get_type_hints(SECTIONS[key])[k], v)
        elif key in owner and not sections_only:
            if key in out[owner[key]]:
                raise OptionError(f"{path}: option '{key}' given twice (at the top level and in [{owner[key]}])")
            out[owner[key]][key] = _coerce(path, key, typing.get_type_hints(SECTIONS[owner[key]])[key], value)
        else:
            raise OptionError(f"{path}: unknown option '{key}'")
    return out


def coerce_option(path: Path, name: str, value: Any) -> Any:
    """A value from a file for the option `name`, checked against its field's type."""
    return _coerce(path, name, typing.get_type_hints(SECTIONS[field_owner()[name]])[name], value)


def option_type(name: str) -> type:
    """The kind of value the option `name` takes: int, float, bool, str (a choice or a path) or tuple."""
    hint = typing.get_type_hints(SECTIONS[field_owner()[name]])[name]
    if typing.get_origin(hint) in (tuple, Literal):
        return tuple if typing.get_origin(hint) is tuple else str
    kinds = [a for a in typing.get_args(hint) or (hint,) if a is not type(None) and typing.get_origin(a) is not Literal]
    return kinds[0] if kinds else str


def _coerce(path: Path, name: str, hint: Any, value: Any) -> Any:
    """A config-file value checked against its field's type (the CLI's values are typed by argparse)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if value is None and type(None) in typing.get_args(hint):
        return None
    if any(value in typing.get_args(a) for a in args if typing.get_origin(a) is Literal):
        return value  # a named value of an int-or-name option, such as batch_size = "max"
    try:
        if typing.get_origin(hint) is Literal:
            return value  # build_config names the choices
        if typing.get_origin(hint) is tuple:
            if not isinstance(value, list | tuple):
                raise TypeError
            return tuple(_scalar(args[0], v) for v in value)
        return _scalar(args[0] if args else hint, value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer of hundreds of digits for a float
        expected = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
        what = (
            f"a list of {expected[args[0]].removeprefix('an ').removeprefix('a ')}s"
            if typing.get_origin(hint) is tuple
            else expected.get(args[0] if args else hint, str(hint))
        )
        names = [v for a in args if typing.get_origin(a) is Literal for v in typing.get_args(a)]
        what += "".join(f" or {v!r}" for v in names)
        raise OptionError(f"{path}: option '{name}' is {value!r}, expected {what}") from None


def _scalar(kind: type, value: Any) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise TypeError
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return value
    if kind is float:
        if isinstance(value, bool):
            raise TypeError
        return float(value)  # YAML reads 1e-3 as a string; float() takes it
    if kind is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    raise TypeError


def build_config(overrides: dict[str, dict[str, Any]]) -> Config:
    """Make a Config from {section: {field: value}} over the defaults; bad values raise UserError."""
    sections = {}
    for name, cls in SECTIONS.items():
        values = overrides.get(name, {})
        hints = typing.get_type_hints(cls)
        for k, v in values.items():
            choices = _choices(hints[k])
            if choices and v not in choices:
                raise OptionError(f"invalid value for {k}: {v!r} (expected one of {', '.join(choices)})")
        try:
            sections[name] = cls(**values)
        except (ValueError, TypeError) as e:
            raise OptionError(f"invalid configuration: {e}") from e
    try:
        return Config(**sections)
    except ValueError as e:
        raise OptionError(f"invalid configuration: {e}") from e


def _choices(hint: Any) -> tuple[str, ...] | None:
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None
