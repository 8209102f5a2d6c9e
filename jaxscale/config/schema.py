"""Typed, frozen, validated configs for model, data, training and mesh (a leaf module)."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config value is invalid; the message names the field and the fix."""


@functools.cache
def _float_fields(cls: type) -> tuple[str, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(n for n, tp in hints.items() if float in (typing.get_args(tp) or (tp,)))


def _normalise(obj: Any) -> None:
    """Store ints given for float fields as floats (equal configs get equal run IDs) and refuse
    NaN or infinity, which would otherwise surface much later as a 'diverged' run."""
    for n in _float_fields(type(obj)):
        v = getattr(obj, n)
        if isinstance(v, int) and not isinstance(v, bool):
            object.__setattr__(obj, n, float(v))
        elif isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{type(obj).__name__}.{n}: must be a finite number, got {v}")


def _field(default: Any, help: str) -> Any:
    """A dataclass field whose help text `--help` shows."""
    return field(default=default, metadata={"help": help})


def help_text(cls: type, name: str) -> str:
    """The help text of config field `name` of `cls`."""
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


def _require(ok: bool, name: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {msg}")


def _positive(obj: Any, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        _require(
            isinstance(v, int) and not isinstance(v, bool) and v > 0,
            f"{type(obj).__name__}.{n}",
            f"must be a positive integer, got {v!r}",
        )


def _choice(obj: Any, name: str, options: Sequence[str]) -> None:
    v = getattr(obj, name)
    if v not in options:
        close = difflib.get_close_matches(str(v), options, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"{type(obj).__name__}.{name}: unknown value {v!r}{hint}; choose one of {list(options)}"
        )


ACTIVATIONS = ("gelu", "swiglu")
NORMS = ("rmsnorm", "layernorm")
POSITIONS = ("rope", "learned", "none")
DTYPES = ("float32", "bfloat16")
REMATS = ("none", "full", "dots")
SCHEDULES = ("cosine", "constant", "wsd")
COOLDOWN_SHAPES = ("linear", "1-sqrt")
PARAMETERIZATIONS = ("sp", "mup")
DEPTH_SCALINGS = ("none", "1/L")
# ModelConfig fields added after run IDs existed: left out of the hash at these defaults, so
# every earlier run keeps its ID (a non-default value changes training and is hashed).
MODEL_HASHED_UNLESS_DEFAULT = {
    "parameterization": "sp",
    "base_width": None,
    "depth_scaling": "none",
    "base_depth": None,
}


@dataclass(frozen=True)
class ModelConfig:
    """Decoder-only transformer shape; everything the model needs and nothing else."""

    d_model: int = _field(128, "width: residual-stream size")
    n_layers: int = _field(2, "depth: number of transformer blocks")
    n_heads: int = _field(4, "attention heads (must divide d_model)")
    d_ff: int = _field(512, "MLP hidden size")
    vocab_size: int = _field(257, "tokenizer vocabulary (257 for bytes + end-of-document)")
    context_length: int = _field(256, "tokens per training sequence")
    activation: str = _field("gelu", "gelu | swiglu")
    norm: str = _field("rmsnorm", "rmsnorm | layernorm")
    position: str = _field("rope", "rope | learned | none")
    tie_embeddings: bool = _field(True, "share the input embedding and the output head")
    param_dtype: str = _field("float32", "float32 | bfloat16 parameter storage")
    compute_dtype: str = _field("float32", "float32 | bfloat16 matmuls (bfloat16 pays on TPU/GPU)")
    scan_layers: bool = _field(
        True, "stack layers and lax.scan over depth (fast compile; unrolled up to 6 layers)"
    )
    remat: str = _field("none", "none | full | dots: rematerialise blocks to save memory")
    rope_base: float = _field(10000.0, "RoPE frequency base (Su et al. 2021)")
    init_std: float = _field(0.02, "std of the normal init of weight matrices")
    vocab_multiple: int = _field(8, "pad embedding rows to a multiple of this (tensor sharding)")
    parameterization: str = _field(
        "sp", "sp | mup: standard, or μP width scaling from base_width (Yang et al. 2022)"
    )
    base_width: int | None = _field(
        None, "mup: the tuned base d_model (null: this model's own; resized keeps it)"
    )
    depth_scaling: str = _field(
        "none", "none | 1/L: residual branches × base_depth/n_layers (CompleteP, Dey et al. 2025)"
    )
    base_depth: int | None = _field(
        None, "1/L: the tuned base n_layers (null: this model's own; resized keeps it)"
    )

    def __post_init__(self) -> None:
        _normalise(self)
        _choice(self, "parameterization", PARAMETERIZATIONS)
        _choice(self, "depth_scaling", DEPTH_SCALINGS)
        _require(
            self.parameterization == "mup" or self.base_width is None,
            "ModelConfig.base_width",
            "only μP uses a base width; set parameterization=mup or drop base_width",
        )
        _require(
            self.depth_scaling != "none" or self.base_depth is None,
            "ModelConfig.base_depth",
            "only depth scaling uses a base depth; set depth_scaling=1/L or drop base_depth",
        )
        # The base defaults to this model's own shape, stored so `resized` carries it through.
        if self.parameterization == "mup" and self.base_width is None:
            object.__setattr__(self, "base_width", self.d_model)
        if self.depth_scaling != "none" and self.base_depth is None:
            object.__setattr__(self, "base_depth", self.n_layers)
        _positive(self, "d_model", "n_layers", "n_heads", "d_ff", "vocab_size", "context_length")
        _positive(self, "vocab_multiple")
        for n in ("base_width", "base_depth"):
            if getattr(self, n) is not None:
                _positive(self, n)
        _choice(self, "activation", ACTIVATIONS)
        _choice(self, "norm", NORMS)
        _choice(self, "position", POSITIONS)
        _choice(self, "param_dtype", DTYPES)
        _choice(self, "compute_dtype", DTYPES)
        _choice(self, "remat", REMATS)
        _require(
            self.d_model % self.n_heads == 0,
            "ModelConfig.n_heads",
            f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
            f"pick n_heads from the divisors of d_model (e.g. {_divisor_near(self.d_model, self.n_heads)})",
        )
        _require(
            self.position != "rope" or self.head_dim % 2 == 0,
            "ModelConfig.n_heads",
            f"RoPE needs an even head_dim, got {self.head_dim}; change n_heads or d_model",
        )
        _require(self.init_std > 0, "ModelConfig.init_std", "must be > 0")
        _require(self.rope_base > 1, "ModelConfig.rope_base", f"must be > 1, got {self.rope_base}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def padded_vocab(self) -> int:
        """Embedding rows: vocab_size rounded up to vocab_multiple so tensor sharding divides."""
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    @property
    def aspect_ratio(self) -> float:
        """d_model / n_layers, the shape axis of Kaplan et al. 2020 Fig. 5."""
        return self.d_model / self.n_layers

    @property
    def _norm_params(self) -> int:
        return self.d_model * (2 if self.norm == "layernorm" else 1)

    @property
    def params_per_layer(self) -> int:
        attn = 4 * self.d_model * self.d_model
        mlp = (3 if self.activation == "swiglu" else 2) * self.d_model * self.d_ff
        return attn + mlp + 2 * self._norm_params

    @property
    def n_params_embedding(self) -> int:
        """Token (and learned position) embeddings plus an untied output head."""
        n = self.padded_vocab * self.d_model
        if self.position == "learned":
            n += self.context_length * self.d_model
        if not self.tie_embeddings:
            n += self.d_model * self.padded_vocab
        return n

    @property
    def n_params_nonembedding(self) -> int:
        """Kaplan et al. 2020's N: every parameter outside the embedding matrices."""
        return self.n_layers * self.params_per_layer + self._norm_params

    @property
    def n_params(self) -> int:
        return self.n_params_embedding + self.n_params_nonembedding

    def resized(
        self, width: int, depth: int, *, head_dim: int | None = None, ffn_ratio: float | None = None
    ) -> ModelConfig:
        """The one sizing rule: this model at (width, depth), keeping its head_dim, MLP ratio and
        every other field (heads and d_ff derived by `from_width_depth`)."""
        keep = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("d_model", "n_layers", "n_heads", "d_ff")
        }
        # SwiGLU's d_ff is 2/3 of the GELU-equivalent (rounded up to 8), so its ratio is the 4x one.
        ratio = 4.0 if self.activation == "swiglu" else self.d_ff / self.d_model
        return ModelConfig.from_width_depth(
            width,
            depth,
            head_dim=head_dim or self.head_dim,
            ffn_ratio=ratio if ffn_ratio is None else ffn_ratio,
            **keep,
        )

    @classmethod
    def from_width_depth(
        cls,
        width: int,
        depth: int,
        *,
        head_dim: int = 64,
        ffn_ratio: float = 4.0,
        **kw: Any,
    ) -> ModelConfig:
        """Build from (d_model, n_layers): heads = width/head_dim (one head if narrower),
        d_ff = ffn_ratio*width for GELU or 2/3 of that rounded up to a multiple of 8 for
        SwiGLU (same MLP parameter count, Shazeer 2020)."""
        _require(
            isinstance(width, int) and width > 0, "width", f"must be a positive int, got {width!r}"
        )
        _require(
            isinstance(depth, int) and depth > 0, "depth", f"must be a positive int, got {depth!r}"
        )
        hd = min(head_dim, width)
        _require(
            width % hd == 0,
            "width",
            f"width={width} is not a multiple of head_dim={hd}; use a multiple of {hd}",
        )
        d_ff = int(round(ffn_ratio * width))
        if kw.get("activation", "gelu") == "swiglu":
            d_ff = 8 * math.ceil(2 * d_ff / 3 / 8)
        return cls(d_model=width, n_layers=depth, n_heads=width // hd, d_ff=d_ff, **kw)


def _divisor_near(n: int, k: int) -> int:
    divs = [d for d in range(1, n + 1) if n % d == 0]
    return min(divs, key=lambda d: abs(d - k))


@dataclass(frozen=True)
class DataConfig:
    """Where tokens come from and how they are split.

    corpus: "stdlib" (built in), a text file / directory / glob, "tokens:PATH" for a
    pre-tokenized uint16/uint32 file, or "hf:NAME[:SPLIT[:FIELD]]" for a Hugging Face dataset.
    tokenizer: "byte" (256 bytes + end-of-document) or "bpe:PATH.json" / "bpe:VOCAB_SIZE".
    """

    corpus: str = _field(
        "stdlib", "stdlib (built in) | text file/dir/glob | tokens:PATH | hf:NAME[:SPLIT[:FIELD]]"
    )
    tokenizer: str = _field("byte", "byte | bpe:PATH.json | bpe:VOCAB_SIZE (trained locally)")
    val_fraction: float = _field(0.05, "fraction of documents held out for evaluation")
    max_bytes: int | None = _field(8_000_000, "cap on corpus bytes read (null for all)")
    token_dtype: str = _field("uint16", "uint16 | uint32 element type of tokens: files")
    split_seed: int = _field(0, "seed of the train/validation split by document")

    def __post_init__(self) -> None:
        _normalise(self)
        _require(bool(self.corpus), "DataConfig.corpus", "must not be empty")
        _require(
            0.0 < self.val_fraction < 0.5,
            "DataConfig.val_fraction",
            f"must be in (0, 0.5), got {self.val_fraction}",
        )
        _require(
            self.max_bytes is None or (isinstance(self.max_bytes, int) and self.max_bytes > 0),
            "DataConfig.max_bytes",
            "must be a positive int or null",
        )
        _choice(self, "token_dtype", ("uint16", "uint32"))
        tok = self.tokenizer
        _require(
            tok == "byte" or tok.startswith("bpe:"),
            "DataConfig.tokenizer",
            f"unknown tokenizer {tok!r}; use 'byte', 'bpe:PATH.json' or 'bpe:VOCAB_SIZE'",
        )


# TrainConfig fields that describe how values were chosen; left out of RunConfig.run_id.
UNHASHED_TRAIN = ("lr_rule", "batch_rule", "branch_points")
# TrainConfig fields added after run IDs existed: left out of the hash at these defaults, so
# every earlier run keeps its ID (a non-default value changes training and is hashed).
TRAIN_HASHED_UNLESS_DEFAULT = {"cooldown_shape": "linear", "branch_of": "", "branch_step": 0}


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and loop settings (AdamW, schedule, eval, checkpoints)."""

    batch_size: int = _field(16, "global sequences per optimizer step")
    batch_rule: str = _field(
        "", "the rule that chose train.batch_size (empty: set by hand; not hashed)"
    )
    steps: int = _field(200, "optimizer steps")
    grad_accum: int = _field(1, "microbatches per step (>= 2 enables the gradient noise scale)")
    lr: float = _field(3e-3, "peak learning rate (AdamW)")
    lr_rule: str = _field(
        "", "the rule that chose train.lr, as a study applied it (empty: set by hand; not hashed)"
    )
    schedule: str = _field("cosine", "cosine | constant | wsd (warmup-stable-decay)")
    warmup_steps: int = _field(20, "linear warmup steps")
    min_lr_ratio: float = _field(0.1, "final LR / peak LR")
    decay_fraction: float = _field(0.2, "wsd: fraction of steps in the final linear decay")
    weight_decay: float = _field(
        0.1, "decoupled weight decay on matrices (Loshchilov & Hutter 2019)"
    )
    beta1: float = _field(0.9, "Adam first-moment decay")
    beta2: float = _field(0.95, "Adam second-moment decay")
    eps: float = _field(1e-8, "Adam epsilon")
    grad_clip: float = _field(1.0, "global-norm clip (0 disables)")
    eval_every: int = _field(50, "steps between validation evaluations")
    eval_batches: int = _field(4, "validation batches per evaluation")
    checkpoint_every: int = _field(100, "steps between orbax checkpoints")
    keep_checkpoints: int = _field(2, "checkpoints kept on disk")
    log_every: int = _field(1, "steps between throughput measurements")
    seed: int = _field(0, "init and data-order seed")
    gns: bool = _field(False, "log the gradient noise scale B_simple (McCandlish et al. 2018)")
    gns_ema: float = _field(0.95, "EMA decay of the noise-scale estimates")
    cooldown_shape: str = _field(
        "linear", "wsd: shape of the final decay, linear | 1-sqrt (Hägele et al. 2024)"
    )
    branch_of: str = _field(
        "", "run_id of the constant-LR trunk this run branches off (empty: not a branch)"
    )
    branch_step: int = _field(0, "branch: the trunk step whose checkpoint this run starts from")
    branch_points: tuple[int, ...] = _field(
        (), "trunk: steps checkpointed and kept for its branches (not hashed)"
    )

    @property
    def decay_start(self) -> int:
        """wsd: the first step of the final decay (the steps before it are warmup + constant)."""
        n_decay = max(1, int(round(self.decay_fraction * self.steps)))
        return max(self.warmup_steps, self.steps - n_decay)

    def __post_init__(self) -> None:
        _normalise(self)
        _positive(self, "batch_size", "steps", "grad_accum", "eval_every", "eval_batches")
        _positive(self, "checkpoint_every", "keep_checkpoints", "log_every")
        _require(
            self.batch_size % self.grad_accum == 0,
            "TrainConfig.grad_accum",
            f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}",
        )
        _require(
            math.isfinite(self.lr) and self.lr > 0, "TrainConfig.lr", f"must be > 0, got {self.lr}"
        )
        _choice(self, "schedule", SCHEDULES)
        _require(
            0 <= self.warmup_steps <= self.steps,
            "TrainConfig.warmup_steps",
            f"{self.warmup_steps} warmup steps do not fit in a run of {self.steps} steps; "
            f"set train.warmup_steps to at most {self.steps} (e.g. {max(0, self.steps // 10)})",
        )
        _require(0 <= self.min_lr_ratio <= 1, "TrainConfig.min_lr_ratio", "must be in [0, 1]")
        _require(0 < self.decay_fraction <= 1, "TrainConfig.decay_fraction", "must be in (0, 1]")
        _require(self.weight_decay >= 0, "TrainConfig.weight_decay", "must be >= 0")
        _require(self.grad_clip >= 0, "TrainConfig.grad_clip", "must be >= 0 (0 disables)")
        _require(0 <= self.gns_ema < 1, "TrainConfig.gns_ema", "must be in [0, 1)")
        for b in ("beta1", "beta2"):
            v = getattr(self, b)
            _require(0 <= v < 1, f"TrainConfig.{b}", f"must be in [0, 1), got {v}")
        _require(self.eps > 0, "TrainConfig.eps", f"must be > 0, got {self.eps}")
        _require(
            isinstance(self.seed, int) and 0 <= self.seed < 2**31,
            "TrainConfig.seed",
            f"must be in [0, 2**31) (JAX's int32 keys; grouped runs stack seeds), got {self.seed}",
        )
        _require(
            not self.gns or self.grad_accum >= 2,
            "TrainConfig.gns",
            "the gradient noise scale needs two batch sizes: set grad_accum >= 2",
        )
        _choice(self, "cooldown_shape", COOLDOWN_SHAPES)
        self._check_branching()

    def _check_branching(self) -> None:
        points = self.branch_points
        if isinstance(points, str):  # a CLI override: "120,240", "[120, 240]" or "()"
            try:
                points = tuple(int(p) for p in points.strip("()[] ").split(",") if p.strip())
            except ValueError:
                pass
        ok = isinstance(points, (list, tuple)) and all(
            isinstance(p, int) and not isinstance(p, bool) for p in points
        )
        _require(ok, "TrainConfig.branch_points", f"must be a list of steps, got {points!r}")
        points = tuple(sorted(set(points)))
        object.__setattr__(self, "branch_points", points)  # JSON gives lists; keep it hashable
        _require(
            all(0 < p <= self.steps for p in points),
            "TrainConfig.branch_points",
            f"steps {list(points)} must lie in [1, steps={self.steps}]",
        )
        if not self.branch_of:
            _require(
                self.branch_step == 0,
                "TrainConfig.branch_step",
                "is set but branch_of is empty; name the trunk's run_id in train.branch_of",
            )
            return
        _require(
            not points,
            "TrainConfig.branch_points",
            "a branch cannot be a trunk itself; drop branch_points or branch_of",
        )
        _require(
            self.schedule == "wsd",
            "TrainConfig.schedule",
            f"a branch cools down from its trunk: set schedule=wsd, not {self.schedule!r}",
        )
        # Up to decay_start a wsd run is its constant-LR trunk, so the branch equals an
        # independent wsd run of the same length (Hägele et al. 2024, Sec. 3).
        _require(
            0 < self.branch_step <= self.decay_start,
            "TrainConfig.branch_step",
            f"{self.branch_step} must lie in [1, {self.decay_start}] (the decay starts at step "
            f"{self.decay_start}); branch off earlier or shorten the cooldown",
        )


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh spec 'data=-1,fsdp=1,tensor=1' (-1 takes the remaining devices)."""

    spec: str = _field(
        "data=-1,fsdp=1,tensor=1",
        "device mesh, e.g. data=-1,fsdp=1,tensor=1 (-1 takes the remaining devices)",
    )
    distributed: bool = _field(False, "call jax.distributed.initialize (multi-host)")
    coordinator: str | None = _field(
        None, "host:port of process 0 (multi-host without auto-discovery)"
    )
    num_processes: int | None = _field(
        None, "number of processes (multi-host without auto-discovery)"
    )
    process_id: int | None = _field(
        None, "this process's index (multi-host without auto-discovery)"
    )

    def __post_init__(self) -> None:
        self.axes()  # validates the spec

    def axes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for part in self.spec.replace(" ", "").split(","):
            if not part:
                continue
            name, sep, val = part.partition("=")
            _require(
                bool(sep) and name in ("data", "fsdp", "tensor"),
                "MeshConfig.spec",
                f"bad entry {part!r}; write e.g. 'data=-1,fsdp=1,tensor=1'",
            )
            try:
                n = int(val)
            except ValueError:
                raise ConfigError(f"MeshConfig.spec: {name}={val!r} is not an integer") from None
            _require(n == -1 or n > 0, "MeshConfig.spec", f"{name}={n}: sizes are positive or -1")
            out[name] = n
        _require(
            sum(v == -1 for v in out.values()) <= 1,
            "MeshConfig.spec",
            "at most one axis may be -1",
        )
        return {k: out.get(k, 1) for k in ("data", "fsdp", "tensor")}


@dataclass(frozen=True)
class RunConfig:
    """One training run: model, data, training and mesh settings."""

    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "model shape"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "corpus and split"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "optimisation"})
    mesh: MeshConfig = field(default_factory=MeshConfig, metadata={"help": "device mesh"})
    name: str = _field("run", "a label for humans; not part of the run ID")

    def __post_init__(self) -> None:
        for f, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig)):
            _require(
                isinstance(getattr(self, f), cls), f"RunConfig.{f}", f"must be a {cls.__name__}"
            )

    @property
    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.model.context_length

    @property
    def total_tokens(self) -> int:
        return self.tokens_per_step * self.train.steps

    @property
    def adamw_timescale(self) -> float:
        """AdamW EMA timescale as a fraction of training, τ = B / (η λ D) (Wang & Aitchison 2024;
        Bergsma et al. 2025), B tokens/step, D planned tokens, η peak LR; inf if λ = 0."""
        # The decay is multiplied by the LR (core.train.make_optimizer), so 1/(ηλ) is the EMA
        # timescale in steps and B/D = 1/steps turns it into a fraction of the run.
        wd = self.train.weight_decay
        return self.tokens_per_step / (self.train.lr * wd * self.total_tokens) if wd else math.inf

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def run_id(self) -> str:
        """Stable 12-hex ID from everything that changes the result (not name, mesh or the
        hyperparameter rules' descriptions)."""
        d = self.to_dict()
        d.pop("name")
        d.pop("mesh")
        # How lr and batch_size were chosen is provenance, not training: the same run reached by
        # two rules is one run, and runs from before the rule fields keep their IDs.
        for k in UNHASHED_TRAIN:
            d["train"].pop(k)
        for k, default in TRAIN_HASHED_UNLESS_DEFAULT.items():
            if d["train"][k] == default:
                d["train"].pop(k)
        for k, default in MODEL_HASHED_UNLESS_DEFAULT.items():
            if d["model"][k] == default:
                d["model"].pop(k)
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        return _build(cls, d, "")

    def replace(self, **overrides: Any) -> RunConfig:
        """Apply dotted overrides like {'model.d_model': 256, 'train.lr': 1e-3}."""
        return apply_overrides(self, overrides)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "mesh": MeshConfig}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a scalar to the annotated type, with a readable error."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
                if f.is_integer():
                    return int(f)
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")


def _unknown(key: str, options: Sequence[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(options), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {sorted(options)}"
    return ConfigError(f"{where}: unknown key {key!r}{hint}")


def _build(cls: type, d: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kw: dict[str, Any] = {}
    for k, v in d.items():
        where = f"{prefix}{k}"
        if k not in names:
            raise _unknown(k, names, prefix.rstrip(".") or "config")
        if cls is RunConfig and k in _SECTIONS:
            kw[k] = _build(_SECTIONS[k], v or {}, f"{k}.")
        else:
            kw[k] = _coerce(v, hints[k], where)
    return cls(**kw)


def apply_overrides(cfg: RunConfig, overrides: Mapping[str, Any]) -> RunConfig:
    """Return cfg with dotted (or unambiguous bare) keys replaced, re-validated."""
    d = cfg.to_dict()
    for key, value in overrides.items():
        section, _, leaf = key.partition(".")
        if not leaf:
            if key == "name":
                d["name"] = value
                continue
            owners = [
                s for s, c in _SECTIONS.items() if key in {f.name for f in dataclasses.fields(c)}
            ]
            if len(owners) != 1:
                every = [
                    f"{s}.{f.name}" for s, c in _SECTIONS.items() for f in dataclasses.fields(c)
                ]
                if owners:
                    raise ConfigError(
                        f"override {key!r} is ambiguous; write one of {[f'{o}.{key}' for o in owners]}"
                    )
                raise _unknown(key, every + ["name"], "override")
            section, leaf = owners[0], key
        if section not in _SECTIONS:
            raise _unknown(section, list(_SECTIONS) + ["name"], "override")
        d[section][leaf] = value
    return RunConfig.from_dict(d)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Parse ['model.d_model=256', 'train.lr=1e-3'] into a dict (values YAML-typed)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, val = item.lstrip("-").partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: write KEY=VALUE, e.g. model.d_model=256")
        out[key] = yaml.safe_load(val) if val != "" else ""
    return out


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a YAML/JSON run config (safe loading only) and apply KEY=VALUE overrides."""
    import yaml

    d: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML/JSON: {e}") from None
    cfg = RunConfig.from_dict(d)
    return apply_overrides(cfg, parse_overrides(overrides)) if overrides else cfg
