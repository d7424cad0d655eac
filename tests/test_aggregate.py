from petridish.aggregate import cells, varying_keys


def run(seed, preset, value):
    return {
        "experiment": "persistence",
        "status": "done",
        "config": {"seed": seed, "model": {"preset": preset}},
        "metrics": {"x": value, "x.ci_low": 0, "x.ci_high": 1, "x.n": 10},
    }


def test_cells_group_seeds_and_bootstrap_across_them():
    runs = [run(0, "nano", 0.2), run(1, "nano", 0.4), run(2, "nano", 0.6), run(0, "mini", 1.0)]
    grouped = cells(runs)
    assert [len(c.runs) for c in grouped] == [3, 1]
    nano = grouped[0].summary()
    assert (
        abs(nano["x"] - 0.4) < 1e-12
        and nano["x.n"] == 3
        and 0.2 <= nano["x.ci_low"] <= nano["x"] <= nano["x.ci_high"] <= 0.6
    )
    assert set(grouped[0].summary()) == {"x", "x.ci_low", "x.ci_high", "x.n"}  # per-run intervals are not averaged
    assert varying_keys(grouped) == ["model.preset"]
