"""Evaluate trained runs on several eval sets (per-position loss), and loss-by-position analysis.

`jaxscale eval RUN_OR_RESULTS --sets stdlib,site-packages,prose --per-position` restores each
run's latest checkpoint, evaluates it on more batches than training did, and writes
``<run_dir>/eval.json`` (atomically) with, per set, the mean loss and the loss at every context
position. Analyses (this module's position study, jaxscale.shift) read those files.

Position study (Kaplan et al. 2020 §3.3, Fig. 20): per-token loss at position t (t = number of
tokens the prediction conditions on) follows L(t) = L_inf + A·t^-alpha for t >= 2 per model; the
first token (t = 1, no context beyond itself) is the exception and is reported separately. The
trend with N is the per-position scaling exponent -d log L(t) / d log N: larger models gain
more at later positions, where they can use the context.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd
from scipy.optimize import curve_fit, minimize_scalar, nnls

from jaxscale.config import RunConfig
from jaxscale.core import data, train
from jaxscale.runs import store

EVAL_FILE = "eval.json"
DEFAULT_SETS = ("stdlib",)
ALPHA_MAX = 5.0  # position exponents beyond this are indistinguishable from a step at t_min
MIN_EVAL_SEQUENCES = 2048  # per-position means need thousands of windows to resolve L(t)


# --- loading and evaluating runs ----------------------------------------------------------


def read_config(run_dir: str | Path) -> Any:
    """The RunConfig stored in run_dir/config.json."""

    run_dir = Path(run_dir)
    raw = store.read_json(run_dir / "config.json")
    if raw is None:
        raise FileNotFoundError(
            f"{run_dir} has no readable config.json; pass a run directory written by "
            "`jaxscale train` / `jaxscale sweep run` (or a results directory of them)"
        )
    return RunConfig.from_dict({k: v for k, v in raw.items() if k != "run_id"})


def load_params(run_dir: str | Path) -> tuple[Any, Any, dict, int]:
    """(cfg, Setup, params, step) of a run's newest readable checkpoint."""

    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    ckpt = run_dir / "checkpoints"
    if not ckpt.is_dir() or not any(p.name.isdigit() for p in ckpt.iterdir()):
        raise FileNotFoundError(
            f"{run_dir} has no checkpoints; train it first (jaxscale train / sweep run)"
        )
    s = train.setup(cfg)
    abstract = jax.tree.map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
        jax.eval_shape(s.init_fn),
        s.state_shardings,
    )
    mngr = train._checkpoint_manager(run_dir, cfg.train)
    try:
        state, step = train._restore_latest(mngr, abstract)
    finally:
        mngr.close()
    if state is None:
        raise FileNotFoundError(f"{run_dir}: no readable checkpoint")
    return cfg, s, state["params"], int(step)


def eval_tokens(
    name: str, cfg: Any, *, max_bytes: int | None = 2_000_000
) -> tuple[np.ndarray, dict]:
    """Token stream + description of eval set `name` (built-in name or a text path), tokenized
    with the run's tokenizer."""

    if name in data.EVAL_CORPORA:
        es = data.eval_corpus(name, cfg.data, max_bytes=max_bytes)
        return es.tokens, {"source": es.source, "fingerprint": es.fingerprint, "n_docs": es.n_docs}
    if not (Path(name).exists() or any(ch in name for ch in "*?") or ":" in name):
        raise ValueError(
            f"unknown eval set {name!r}: use one of {list(data.EVAL_CORPORA)} or a path to a "
            "text file / directory / glob (or tokens:PATH, hf:NAME)"
        )
    tok = cfg.data.tokenizer
    if tok != "byte" and tok.partition(":")[2].isdigit():
        tok = data.load_corpus(cfg.data).tokenizer  # the BPE vocabulary the run trained with
    dc = dataclasses.replace(cfg.data, corpus=name, tokenizer=tok, max_bytes=max_bytes)
    c = data.load_corpus(dc)
    # A user's eval set is held out as a whole: both of load_corpus's splits are evaluated.
    tokens = np.concatenate([np.asarray(c.train), np.asarray(c.val)])
    return tokens, {
        "source": c.source,
        "fingerprint": c.fingerprint,
        "n_docs": c.n_docs_train + c.n_docs_val,
    }


def evaluate_run(
    run_dir: str | Path,
    sets: Sequence[str] = DEFAULT_SETS,
    *,
    n_batches: int | None = None,
    batch_size: int | None = None,
    max_bytes: int | None = 2_000_000,
    force: bool = False,
    seed: int = 1234,
) -> dict:
    """Evaluate a run's latest checkpoint on each set; merge into and return run_dir/eval.json."""

    run_dir = Path(run_dir)
    prev = store.read_json(run_dir / EVAL_FILE) or {}
    cfg, s, params, step = load_params(run_dir)
    B = batch_size or cfg.train.batch_size
    div = int(np.prod([s.mesh.shape[a] for a in s.mesh.axis_names if a in ("data", "fsdp")]))
    if B % div:
        raise ValueError(f"--batch-size {B} is not divisible by the data x fsdp mesh size {div}")
    L = cfg.model.context_length
    n_batches = n_batches or max(2, -(-MIN_EVAL_SEQUENCES // B))
    out_sets = dict(prev.get("sets", {})) if prev.get("step") == step else {}
    for name in sets:
        old = out_sets.get(name)
        if (
            old
            and not force
            and old.get("n_batches", 0) >= n_batches
            and old.get("batch_size") == B
        ):
            continue
        tokens, desc = eval_tokens(name, cfg, max_bytes=max_bytes)
        wins = data.eval_batches(tokens, batch_size=B, seq_len=L, n_batches=n_batches, seed=seed)
        if wins.max() >= cfg.model.vocab_size:
            raise ValueError(
                f"eval set {name!r} has token ids up to {int(wins.max())} but the model's vocab "
                f"is {cfg.model.vocab_size}; it was tokenized with a different tokenizer"
            )
        with jax.set_mesh(s.mesh):
            outs = []
            for w in wins:
                arr = jax.make_array_from_callback(w.shape, s.eval_sharding, lambda i, w=w: w[i])
                outs.append(s.eval_fn(params, arr))
            outs = jax.device_get(outs)
        pos_BxT = np.stack([np.asarray(o["loss_by_pos"], float) for o in outs])
        by_pos = pos_BxT.mean(0)
        pos_se = pos_BxT.std(0, ddof=1) / math.sqrt(len(outs))
        per_batch = np.array([float(o["loss"]) for o in outs])
        out_sets[name] = {
            **desc,
            "loss": float(per_batch.mean()),
            # Batches are stratified windows, so their spread gives an honest standard error.
            "loss_se": float(per_batch.std(ddof=1) / math.sqrt(len(per_batch)))
            if len(per_batch) > 1
            else math.nan,
            "loss_by_pos": [float(x) for x in by_pos],
            "loss_by_pos_se": [float(x) for x in pos_se],
            "n_batches": int(n_batches),
            "batch_size": int(B),
            "n_eval_tokens": int(n_batches * B * L),
        }
    result = {
        "run_id": cfg.run_id(),
        "name": cfg.name,
        "step": step,
        "tokens": step * cfg.tokens_per_step,
        "n_params_nonembedding": cfg.model.n_params_nonembedding,
        "n_params": cfg.model.n_params,
        "context_length": L,
        "sets": out_sets,
    }
    if jax.process_index() == 0:
        store.write_json_atomic(run_dir / EVAL_FILE, result)
    return result


def run_dirs(path: str | Path) -> list[Path]:
    """The run directory itself, or every run directory under a results directory."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{str(p)!r} does not exist")
    if (p / "config.json").exists():
        return [p]
    dirs = sorted(q for q in p.iterdir() if q.is_dir() and (q / "config.json").exists())
    if not dirs:
        raise FileNotFoundError(f"{str(p)!r} holds no run directories (no */config.json)")
    return dirs


def load_evals(path: str | Path) -> list[dict]:
    """Every eval.json under a results (or run) directory, with its run directory as 'path'."""

    out = []
    for d in run_dirs(path):
        r = store.read_json(d / EVAL_FILE)
        if r is not None:
            out.append({**r, "path": str(d)})
    return out


# --- loss by position (Kaplan et al. 2020 §3.3) --------------------------------------------


@dataclass(frozen=True)
class PositionFit:
    """L(t) = L_inf + A t^-alpha over t >= t_min (Kaplan et al. 2020 §3.3, Fig. 20)."""

    L_inf: float
    A: float
    alpha: float
    se: dict[str, float]
    t_min: int
    rmse: float
    first_token_loss: float

    def __call__(self, t: Any) -> np.ndarray:
        return self.L_inf + self.A * np.asarray(t, float) ** -self.alpha

    @property
    def first_token_excess(self) -> float:
        """Observed L(1) minus the power law extrapolated to t = 1 (the first-token exception)."""
        return self.first_token_loss - float(self(1.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "L_inf": self.L_inf,
            "A": self.A,
            "alpha": self.alpha,
            "se": self.se,
            "t_min": self.t_min,
            "rmse": self.rmse,
            "first_token_loss": self.first_token_loss,
            "first_token_excess": self.first_token_excess,
        }


def _linear_given_alpha(
    t: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float
) -> tuple[np.ndarray, float]:
    """Weighted non-negative (L_inf, A) for fixed alpha: loss falls with context, never rises."""

    X = np.stack([np.ones_like(t), t**-alpha], axis=1) * w[:, None]
    beta, rnorm = nnls(X, y * w)
    return beta, float(rnorm**2)


def fit_position(
    loss_by_pos: Sequence[float], t_min: int = 2, se_by_pos: Sequence[float] | None = None
) -> PositionFit:
    """Fit L(t) = L_inf + A t^-alpha to per-position losses (index i predicts with t = i+1 tokens).

    alpha is profiled (non-negative least squares for L_inf, A at each alpha, then a bounded
    scalar refine); scipy.optimize.curve_fit then gives the covariance for the standard errors.
    Positions are weighted by 1/se when per-position standard errors are given.
    """

    y_all = np.asarray(loss_by_pos, float)
    if y_all.ndim != 1 or not np.isfinite(y_all).all():
        raise ValueError("loss_by_pos must be a 1-D list of finite per-position losses")
    t_all = np.arange(1, y_all.size + 1, dtype=float)
    keep = t_all >= t_min
    t, y = t_all[keep], y_all[keep]
    sig = None
    if se_by_pos is not None:
        sig = np.asarray(se_by_pos, float)[keep]
        if not (np.isfinite(sig).all() and (sig > 0).all()):
            sig = None
    w = 1 / sig if sig is not None else np.ones_like(t)
    if t.size < 5:
        raise ValueError(
            f"a position power law needs >= 5 positions at t >= {t_min}, got {t.size}; "
            "use a longer context"
        )
    grid = np.geomspace(1e-3, ALPHA_MAX, 80)
    sse = [_linear_given_alpha(t, y, w, a)[1] for a in grid]
    i = int(np.argmin(sse))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    res = minimize_scalar(
        lambda a: _linear_given_alpha(t, y, w, a)[1], bounds=(lo, hi), method="bounded"
    )
    alpha = float(res.x)
    (L_inf, A), s = _linear_given_alpha(t, y, w, alpha)
    se = {"L_inf": math.nan, "A": math.nan, "alpha": math.nan}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            p, cov = curve_fit(
                lambda tt, a, b, c: a + b * tt**-c,
                t,
                y,
                p0=[L_inf, A, min(alpha, ALPHA_MAX * 0.999)],
                sigma=sig,
                absolute_sigma=False,
                bounds=([0, 0, 0], [np.inf, np.inf, ALPHA_MAX]),
                maxfev=5000,
            )
            if np.all(np.isfinite(p)) and np.sum(((y - (p[0] + p[1] * t ** -p[2])) * w) ** 2) <= s:
                L_inf, A, alpha = (float(v) for v in p)
            se = dict(zip(("L_inf", "A", "alpha"), np.sqrt(np.clip(np.diag(cov), 0, None))))
            se = {k: float(v) for k, v in se.items()}
        except (RuntimeError, ValueError):
            pass
    pred = L_inf + A * t**-alpha
    rmse = float(np.sqrt(np.mean((y - pred) ** 2)))
    return PositionFit(float(L_inf), float(A), float(alpha), se, int(t_min), rmse, float(y_all[0]))


def position_exponents(N: Sequence[float], loss_by_pos_MxT: np.ndarray) -> np.ndarray:
    """Per position t, alpha_N(t) = -d log L(t) / d log N by least squares across M models."""
    x = np.log(np.asarray(N, float))
    Y = np.log(np.asarray(loss_by_pos_MxT, float))
    if x.size < 2 or np.unique(x).size < 2:
        return np.full(Y.shape[1], math.nan)
    xc = x - x.mean()
    return -(xc @ (Y - Y.mean(0))) / (xc @ xc)


@dataclass
class PositionStudy:
    """Per-model position fits and the trend of the per-position losses with N."""

    table: Any  # DataFrame: run_id, name, N, loss, L_inf, A, alpha, ..., first_token_excess
    curves: dict[str, np.ndarray]  # run_id -> loss_by_pos
    alpha_N_by_pos: np.ndarray
    eval_set: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "eval_set": self.eval_set,
            "source": self.source,
            "runs": json.loads(self.table.to_json(orient="records")),
            "alpha_N_by_pos": [
                None if not math.isfinite(v) else float(v) for v in self.alpha_N_by_pos
            ],
            "alpha_N_first_token": _f(self.alpha_N_by_pos[0]),
            "alpha_N_late": _f(
                np.mean(self.alpha_N_by_pos[-max(1, len(self.alpha_N_by_pos) // 4) :])
            ),
        }


def _f(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def position_study(path: str | Path, eval_set: str = "stdlib", t_min: int = 2) -> PositionStudy:
    """Fit L(t) per run from eval.json (falling back to training's final eval_loss_by_pos)."""

    rows, curves, source = [], {}, ""
    for d in run_dirs(path):
        ev = store.read_json(d / EVAL_FILE) or {}
        entry = ev.get("sets", {}).get(eval_set)
        se = None
        if entry and entry.get("loss_by_pos"):
            by_pos, loss, src = entry["loss_by_pos"], entry["loss"], f"eval.json[{eval_set}]"
            se = entry.get("loss_by_pos_se")
        elif eval_set == "stdlib":
            last = [r for r in store.read_jsonl(d / "metrics.jsonl") if "eval_loss_by_pos" in r]
            if not last:
                continue
            by_pos, loss, src = (
                last[-1]["eval_loss_by_pos"],
                last[-1].get("eval_loss"),
                "metrics.jsonl",
            )
        else:
            continue
        cfg = read_config(d)
        fit = fit_position(by_pos, t_min, se)
        curves[d.name] = np.asarray(by_pos, float)
        source = source if source in ("", src) else "mixed"
        source = src if source == "" else source
        rows.append(
            {
                "run_id": d.name,
                "name": cfg.name,
                "N": cfg.model.n_params_nonembedding,
                "loss": loss,
                **{k: v for k, v in fit.to_dict().items() if k != "se"},
                **{f"{k}_se": v for k, v in fit.se.items()},
            }
        )
    if not rows:
        raise ValueError(
            f"no per-position losses for eval set {eval_set!r} under {path}; run "
            f"`jaxscale eval {path} --sets {eval_set} --per-position` first"
        )
    table = pd.DataFrame(rows).sort_values("N").reset_index(drop=True)
    T = min(c.size for c in curves.values())
    Y = np.stack([curves[r][:T] for r in table["run_id"]])
    return PositionStudy(table, curves, position_exponents(table["N"], Y), eval_set, source)


def plot_position(study: PositionStudy, out: str | Path) -> list[Path]:
    """L(t) per model with fits (log-log) and alpha_N(t): PNG + SVG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    tab = study.table
    cmap = plt.get_cmap("viridis")
    for i, r in tab.iterrows():
        c = cmap(i / max(len(tab) - 1, 1))
        y = study.curves[r["run_id"]]
        t = np.arange(1, y.size + 1)
        ax.plot(t, y, ".", ms=3, color=c)
        tt = np.geomspace(r["t_min"], y.size, 100)
        ax.plot(
            tt,
            r["L_inf"] + r["A"] * tt ** -r["alpha"],
            "-",
            lw=1,
            color=c,
            label=f"N={r['N']:.3g}: {r['L_inf']:.2f}+{r['A']:.2f}t^-{r['alpha']:.2f}",
        )
        ax.plot([1], [y[0]], "x", ms=8, color=c)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="token position t (tokens of context)",
        ylabel=f"loss [nats/token] ({study.eval_set})",
        title="loss by position (× = first token, excluded from fit)",
    )
    ax.legend(fontsize=7)
    a = study.alpha_N_by_pos
    if np.isfinite(a).any():
        bx.plot(np.arange(1, a.size + 1), a, "-", color="C1")
        bx.set_xscale("log")
    else:
        bx.text(0.5, 0.5, "needs >= 2 model sizes", ha="center", transform=bx.transAxes)
    bx.axhline(0, color="k", lw=0.5)
    bx.set(
        xlabel="token position t",
        ylabel="α_N(t) = -d log L(t) / d log N",
        title="gain from scale at each position",
    )
    fig.tight_layout()
    paths = []
    for ext in ("png", "svg"):
        p = out / f"position.{ext}"
        fig.savefig(p, dpi=130, bbox_inches="tight")
        paths.append(p)
    plt.close(fig)
    return paths


def save_position(study: PositionStudy, out: str | Path) -> list[Path]:
    """position.json, position.csv and the plots in out."""

    out = Path(out)
    store.write_json_atomic(out / "position.json", study.to_dict())
    study.table.to_csv(out / "position.csv", index=False)
    return [out / "position.json", out / "position.csv", *plot_position(study, out)]


def describe_position(study: PositionStudy) -> str:
    """A readable paragraph of the position study's numbers."""
    t = study.table
    lines = [
        f"Loss by position ({study.eval_set}, from {study.source}); fit L(t) = L_inf + "
        f"A·t^-alpha over t >= {int(t['t_min'].iloc[0])}:"
    ]
    for _, r in t.iterrows():
        lines.append(
            f"  N={r['N']:>9,}  L_inf={r['L_inf']:.3f}±{r['L_inf_se']:.3f}  A={r['A']:.3f}  "
            f"alpha={r['alpha']:.3f}±{r['alpha_se']:.3f}  rmse={r['rmse']:.4f}  "
            f"L(1)={r['first_token_loss']:.3f} (fit at t=1 off by {r['first_token_excess']:+.3f})"
        )
    d = study.to_dict()
    if d["alpha_N_first_token"] is not None:
        lines.append(
            f"Scaling with N per position: alpha_N(t=1)={d['alpha_N_first_token']:.4f}, "
            f"alpha_N(last quarter of positions)={d['alpha_N_late']:.4f} "
            "(Kaplan: larger models gain more at later positions)."
        )
    return "\n".join(lines)


# --- CLI ------------------------------------------------------------------------------------


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`jaxscale eval RUN_OR_RESULTS [--sets ...] [--per-position] [--batches N]`."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate trained runs on eval sets (per-position loss); writes <run>/eval.json",
        description="Restore each run's latest checkpoint and evaluate it on one or more eval "
        "sets: stdlib (held-out split), site-packages (third-party Python), prose (English), "
        "or a path to your own text. Writes <run_dir>/eval.json. With --per-position, fits "
        "L(t) = L_inf + A t^-alpha per run (Kaplan 2020 §3.3) and plots the sweep.",
    )
    p.add_argument("path", help="a run directory or a results directory of runs")
    p.add_argument(
        "--sets",
        default=",".join(DEFAULT_SETS),
        help="comma-separated eval sets: stdlib, site-packages, prose or text paths",
    )
    p.add_argument(
        "--batches",
        type=int,
        default=None,
        help=f"eval batches per set (default: {MIN_EVAL_SEQUENCES} sequences' worth)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="sequences per eval batch (default: the run's train.batch_size)",
    )
    p.add_argument(
        "--max-bytes",
        type=int,
        default=2_000_000,
        help="bytes of text read for out-of-distribution sets (default 2e6)",
    )
    p.add_argument(
        "--per-position",
        action="store_true",
        help="fit and plot loss vs context position (first set in --sets)",
    )
    p.add_argument("--force", action="store_true", help="re-evaluate sets already in eval.json")
    p.add_argument(
        "--out", default=None, help="directory for position plots (default <path>/analyses)"
    )
    return p


def run_eval_cli(args: argparse.Namespace) -> int:
    """Entry point for `jaxscale eval`."""
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if not sets:
        raise ValueError("--sets is empty; name at least one eval set, e.g. --sets stdlib")
    if args.batches is not None and args.batches < 2:
        raise ValueError(f"--batches must be >= 2 (for a standard error), got {args.batches}")
    dirs = run_dirs(args.path)
    done = 0
    for d in dirs:
        summ = store.read_json(d / "summary.json") or {}
        if summ.get("status") in ("diverged", "failed"):
            print(f"{d.name}: skipped ({summ['status']})")
            continue
        try:
            r = evaluate_run(
                d,
                sets,
                n_batches=args.batches,
                batch_size=args.batch_size,
                max_bytes=args.max_bytes,
                force=args.force,
            )
        except FileNotFoundError as e:
            print(f"{d.name}: skipped ({e})")
            continue
        done += 1
        cells = "  ".join(
            f"{k}={v['loss']:.4f}±{v['loss_se']:.4f}" for k, v in r["sets"].items() if k in sets
        )
        print(
            f"{d.name} {r['name']:<28} N={r['n_params_nonembedding']:>10,} step {r['step']:>6}  "
            f"{cells}"
        )
    if not done:
        print(f"error: no evaluable runs under {args.path}", file=sys.stderr)
        return 2
    print(f"wrote {EVAL_FILE} in {done} run director{'y' if done == 1 else 'ies'}")
    if args.per_position:
        study = position_study(args.path, sets[0])
        out = Path(args.out) if args.out else Path(args.path) / "analyses"
        written = save_position(study, out)
        print(describe_position(study))
        print(f"wrote {len(written)} files to {out}")
    return 0
