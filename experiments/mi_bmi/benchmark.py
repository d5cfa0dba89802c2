"""Every registered bound on the BMI tasks (``experiments.mi_bmi.tasks``), each estimate with a
bootstrap confidence interval.

    python -m experiments.mi_bmi --out experiments/mi_bmi/results/default      # the default subset
    python -m experiments.mi_bmi --out DIR 'tasks=[all]' seeds=3                 # every task, 3 seeds
    python -m experiments.mi_bmi --quick --out /tmp/bmi                          # seconds

Per task and seed: ``n_train`` training pairs and ``n_eval`` held-out pairs, each coordinate
standardised by the training mean and standard deviation (as the BMI benchmark does); one separable
critic per bound (``experiments.mi_gaussian.critics``), every bound starting from the same weights and
seeing the same minibatches (all B×B pairs: diagonal joint, the rest marginal), Adam, η on its own
Adam as in the paper. The estimate is the bound read on the held-out pairs cut into batches of
``batch`` (so InfoNCE is capped at log ``batch``), with a 95% percentile-bootstrap interval over
those batches (``pretrain.estimators.read_out`` and ``bootstrap_interval``); a bound whose read-out
is not finite on some held-out batch (its critic, its scores, or the bound itself overflowing on a
heavy-tailed batch) is reported as diverged, with the number of such batches. Writes ``results.json`` (after every task; a run started again on
the same ``--out`` keeps its rows and does the rest), ``results.md`` and ``run.json`` (command,
settings, wall and CPU time) under ``--out``.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field

import torch

from experiments.mean_std import mean_std
from experiments.mi_bmi.tasks import TASKS
from experiments.mi_gaussian.benchmark import CriticTraining, EstimatorBank, critic_step, diagonal_masks, make_optimisers, pair_initialisation
from experiments.mi_gaussian.critics import build_critic
from experiments.settings import read_settings, require_counts, run_command_line
from pretrain import estimators

DEFAULT_TASKS = ["1v1-normal-0.75", "1v1-additive-0.1", "1v1-bimodal-0.75", "1v1-wiggly-0.75", "1v1-student-t-dof1-0.75",
                 "multinormal-dense-5-5", "multinormal-sparse-5-5", "multinormal-sparse-25-25", "student-t-dense-3-3-dof2",
                 "normal-cdf-sparse-5-5", "half-cube-sparse-5-5", "spiral-sparse-5-5"]


@dataclass
class BMIConfig(CriticTraining):
    """Settings of the BMI run; ``tasks=[all]`` selects every task."""

    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    estimators: list[str] = field(default_factory=estimators.names)
    seeds: int = 1
    steps: int = 2000
    batch: int = 64
    n_train: int = 5000
    n_eval: int = 2048  # 32 evaluation batches of 64
    hidden: int = 64
    embed: int = 16
    baseline_hidden: int = 32  # a-MINE's η(y)
    level: float = 0.95
    resamples: int = 2000
    seed: int = 0


QUICK = dict(tasks=["1v1-normal-0.75", "multinormal-sparse-2-2"], steps=60, n_train=512, n_eval=256, hidden=16, embed=8, resamples=200)


def _standardise(train: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-12)
    return ((train - mean) / std).float(), ((other - mean) / std).float()


def run_task(cfg: BMIConfig, name: str, seed: int) -> list[dict]:
    """Train every bound once on task ``name`` -> one row per bound (estimate, interval, truth)."""
    task, names, e = TASKS[name], cfg.estimators, len(cfg.estimators)
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * seed)
    torch.manual_seed(cfg.seed + 1000 * seed)
    x, y = task.sample(cfg.n_train + cfg.n_eval, gen)
    x_tr, x_ev = _standardise(x[: cfg.n_train], x[cfg.n_train :])
    y_tr, y_ev = _standardise(y[: cfg.n_train], y[cfg.n_train :])
    if task.dim_x != task.dim_y:
        raise ValueError(f"task {name}: the separable critic here needs dim_x == dim_y")
    critic = build_critic("separable", e, task.dim_x, cfg.hidden, cfg.embed, cfg.layers)
    pair_initialisation(critic, 1)
    bank = EstimatorBank(names, 1, task.dim_y, cfg.baseline_hidden)
    opt, opt_eta = make_optimisers(critic, bank, cfg.lr, cfg.lr_eta)
    pos, neg = diagonal_masks(cfg.batch)
    per_epoch = cfg.n_train // cfg.batch
    order = None
    for step in range(cfg.steps):
        k = step % per_epoch
        if k == 0:
            order = torch.randperm(cfg.n_train, generator=gen)
        idx = order[k * cfg.batch : (k + 1) * cfg.batch]
        xb, yb = x_tr[idx], y_tr[idx]
        loss, _ = bank(critic.scores(xb.expand(e, -1, -1), yb.expand(e, -1, -1)), yb[None], pos, neg)
        critic_step(loss, opt, opt_eta, bank, step)
    rows = []
    with torch.no_grad():
        chunks = [(x_ev[i : i + cfg.batch], y_ev[i : i + cfg.batch]) for i in range(0, cfg.n_eval - cfg.batch + 1, cfg.batch)]
        scores = [critic.scores(xc.expand(e, -1, -1), yc.expand(e, -1, -1)) for xc, yc in chunks]  # each [E, B, B]
        baselines = [bank.baseline(yc[None]).squeeze(-1)[0] if bank.baseline is not None else None for _, yc in chunks]
    for i, n in enumerate(names):
        batches = [{"scores": s[i], "pos_mask": pos, "neg_mask": neg, **({"log_baseline": b} if n == "a-mine" else {})}
                   for s, b in zip(scores, baselines)]
        row = {"task": name, "estimator": n, "seed": seed, "true_mi": task.mi, "batches": len(batches)}
        values = estimators.read_out(bank.bounds[i], batches)
        if not torch.isfinite(values).all():  # a non-finite critic, scores or read-out on some held-out batch
            rows.append({**row, "estimate": float("nan"), "low": float("nan"), "high": float("nan"), "error": float("nan"),
                         "diverged": True, "nonfinite_batches": int((~torch.isfinite(values)).sum())})
            continue
        iv = estimators.bootstrap_interval(values, cfg.level, cfg.resamples, seed)
        rows.append({**row, "estimate": iv.estimate, "low": iv.low, "high": iv.high, "error": iv.estimate - task.mi})
    return rows


def _num(value: float, sign: str = "") -> str:
    """Two decimals, or two significant digits once a read-out has exploded (|value| ≥ 1000)."""
    return f"{value:{sign}.2f}" if abs(value) < 1000 else f"{value:{sign}.1e}"


def _cell(mine: list[dict]) -> str:
    """One task and bound over its seeds: mean estimate, ± the seed std (seeds > 1), [the mean of the
    seeds' bootstrap intervals], (mean error); the seeds that diverged are counted, the rest averaged."""
    ok = [r for r in mine if not r.get("diverged")]
    diverged = f"diverged ({len(mine) - len(ok)}/{len(mine)})" if len(ok) < len(mine) else ""
    if not ok:
        return diverged
    avg = lambda k: mean_std([r[k] for r in ok])  # noqa: E731  (mean, std over the finite seeds)
    (estimate, std), (low, _), (high, _), (error, _) = avg("estimate"), avg("low"), avg("high"), avg("error")
    spread = f" ±{_num(std)}" if len(ok) > 1 else ""
    cell = f"{_num(estimate)}{spread} [{_num(low)}, {_num(high)}] ({_num(error, '+')})"
    return f"{cell}; {diverged}" if diverged else cell


def markdown(rows: list[dict], cfg: BMIConfig) -> str:
    """One table: tasks × bounds, a cell per task and bound (:func:`_cell`)."""
    names = list(dict.fromkeys(r["estimator"] for r in rows))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    head = "| task | true MI | " + " | ".join(names) + " |"
    lines = [head, "|---" * (len(names) + 2) + "|"]
    for t in tasks:
        cells = [_cell([r for r in rows if r["task"] == t and r["estimator"] == n]) for n in names]
        true_mi = next(r["true_mi"] for r in rows if r["task"] == t)
        lines.append(f"| {t} | {true_mi:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_config(overrides: list[str], quick: bool = False) -> BMIConfig:
    """Dataclass defaults <- ``QUICK`` <- ``key=value`` overrides; ValueError naming a bad setting, task or bound."""
    cfg = read_settings(BMIConfig, overrides, QUICK if quick else None)
    if cfg.tasks == ["all"]:
        cfg.tasks = list(TASKS)
    bad = [t for t in cfg.tasks if t not in TASKS]
    if bad:
        raise ValueError(f"unknown task(s) {', '.join(bad)}; known: all, {', '.join(TASKS)}")
    bad = [n for n in cfg.estimators if n not in estimators.names()]
    if bad or not cfg.estimators:
        raise ValueError(f"unknown estimator(s) {', '.join(bad) or '(none given)'}; known: {', '.join(estimators.names())}")
    require_counts(cfg, ("seeds", "steps", "batch", "resamples"))
    if cfg.n_train < cfg.batch or cfg.n_eval < cfg.batch:
        raise ValueError(f"n_train ({cfg.n_train}) and n_eval ({cfg.n_eval}) must each hold a batch of {cfg.batch}")
    return cfg


def main(argv: list[str] | None = None) -> list[dict]:
    cfg, out, command = run_command_line(
        "python -m experiments.mi_bmi", __doc__.split("\n\n")[0],
        out_help="output directory; a results.json there is continued (its task/seed rows are kept)",
        quick_help="two tasks, 60 steps: a smoke test",
        overrides_help="settings of BMIConfig, e.g. 'tasks=[all]' seeds=3", load=load_config, argv=argv)
    start, cpu_start, rows = time.time(), time.process_time(), []
    if (out / "results.json").exists():  # continue: keep the task/seed rows already there
        wanted = {(t, s) for t in cfg.tasks for s in range(cfg.seeds)}
        rows = [r for r in json.loads((out / "results.json").read_text()) if (r["task"], r["seed"]) in wanted]
        print(f"continuing {out / 'results.json'}: {len({(r['task'], r['seed']) for r in rows})} task/seed pairs kept", flush=True)
    done = {(r["task"], r["seed"]) for r in rows}
    for name in cfg.tasks:
        for seed in range(cfg.seeds):
            if (name, seed) in done:
                continue
            rows += run_task(cfg, name, seed)
            (out / "results.json").write_text(json.dumps(rows, indent=1))
            print(f"{name} seed {seed} ({time.time() - start:.0f}s): " + " ".join(f"{r['estimator']}={r['estimate']:.2f}" for r in rows[-len(cfg.estimators):]), flush=True)
    launch = {"wall_s": round(time.time() - start, 1), "cpu_s": round(time.process_time() - cpu_start, 1), "trained": len(rows) - len(done) * len(cfg.estimators)}
    before = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() and done else {}
    earlier = before.get("launches", [{k: before[k] for k in ("wall_s", "cpu_s")}] if "wall_s" in before else [])
    launches = [*earlier, launch]
    meta = {"command": command, "config": dataclasses.asdict(cfg), "launches": launches, "torch": torch.__version__,
            "wall_s": round(sum(x["wall_s"] for x in launches), 1), "cpu_s": round(sum(x["cpu_s"] for x in launches), 1)}
    (out / "run.json").write_text(json.dumps(meta, indent=1))
    setting = (f"{cfg.seeds} seed(s), {cfg.steps} steps, batch {cfg.batch}, separable critic (hidden {cfg.hidden} × {cfg.layers}, embedding {cfg.embed}), "
               f"{cfg.n_train} training / {cfg.n_eval} held-out pairs; cell: estimate [{cfg.level:.0%} bootstrap interval over the "
               f"{cfg.n_eval // cfg.batch} evaluation batches] (error = estimate − true MI)")
    cell = ("mean over seeds ± their std [mean of the seeds' intervals] (mean error); \"diverged (k/n)\": k seeds' read-out "
            "was not finite, the rest averaged") if cfg.seeds > 1 else "\"diverged\": the read-out was not finite"
    (out / "results.md").write_text(f"# BMI tasks, every bound\n\n`{command}`\n\n{setting}; {cell}. Wall {meta['wall_s'] / 60:.1f} min, "
                                    f"CPU {meta['cpu_s'] / 60:.1f} min over {len(launches)} launch(es) (run.json).\n\n{markdown(rows, cfg)}\n")
    print(markdown(rows, cfg))
    return rows


if __name__ == "__main__":
    main()
