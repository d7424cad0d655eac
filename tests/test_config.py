import pytest

from petridish.cli import main
from petridish.config import ModelConfig, TrainConfig, from_dict, load_recipe, parse_override
from petridish.errors import BadInput, ConfigError
from petridish.experiments.persistence import PersistenceConfig
from petridish.sweep import expand

RECIPE = """
experiment = "persistence"
name = "t"
seed = 1
[insert.train]
steps = 40
[profile.quick.insert.train]
steps = 7
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(RECIPE)
    return path


def test_precedence_defaults_recipe_profile_set(recipe):
    assert expand(load_recipe(recipe))[0].config.insert.train.steps == 40
    assert expand(load_recipe(recipe, "quick"))[0].config.insert.train.steps == 7
    spec = expand(load_recipe(recipe, "quick", ("insert.train.steps=9",)))[0]
    assert spec.config.insert.train.steps == 9
    assert spec.config.insert.train.lr == TrainConfig().lr  # untouched fields keep their defaults


@pytest.mark.parametrize(
    "data, key",
    [
        ({"model": {"presett": "mini"}}, "model.presett"),
        ({"model": {"preset": 3}}, "model.preset"),
        ({"insert": {"train": {"steps": "many"}}}, "insert.train.steps"),
        ({"insert": {"train": {"steps": -1}}}, "insert.train.steps"),
        ({"insert": {"triggered_fraction": 1.5}}, "insert.triggered_fraction"),
        ({"model": {"preset": "custom", "d_model": 30, "n_heads": 4}}, "model.n_heads"),
        ({"seed": True}, "seed"),
    ],
)
def test_bad_values_name_the_dotted_key(data, key):
    with pytest.raises(ConfigError) as error:
        from_dict(PersistenceConfig, data)
    assert error.value.key == key


def test_int_accepted_where_float_expected():
    assert from_dict(TrainConfig, {"lr": 1}).lr == 1.0
    assert isinstance(from_dict(TrainConfig, {"lr": 1}).lr, float)


def test_preset_overrides_custom_shape():
    assert ModelConfig(preset="small").shape() == (128, 2, 4)
    assert ModelConfig(preset="custom", d_model=40, n_heads=5).shape() == (40, 2, 5)


@pytest.mark.parametrize(
    "body, needle",
    [
        ('experiment = "persistence"\n[model]\nbogus = 1\n', "model.bogus"),
        ('experiment = "persistence"\n[eval]\nn_prompts = "x"\n', "eval.n_prompts"),
        ('experiment = "nope"\n', "experiment"),
        ('experiment = "persistence"\n[model\n', "not valid TOML"),
        ('experiment = "persistence"\n[sweep.grid]\nseed = 3\n', "sweep.grid.seed"),
    ],
)
def test_bad_recipe_is_one_line_and_exit_2(tmp_path, capsys, body, needle):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and str(path) in err and "Traceback" not in err


def test_missing_file_and_unknown_profile(tmp_path, capsys, recipe):
    assert main(["run", str(tmp_path / "absent.toml")]) == 2
    assert "absent.toml: recipe file not found" in capsys.readouterr().err
    assert main(["run", str(recipe), "--profile", "huge"]) == 2
    assert "no profile 'huge'" in capsys.readouterr().err


def test_bad_override_syntax():
    with pytest.raises(BadInput, match="dotted.key=value"):
        parse_override("novalue")


def test_sweep_grid_zip_random(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        'experiment = "persistence"\nname = "s"\n'
        '[sweep.grid]\nseed = [0, 1]\n"model.preset" = ["nano", "mini"]\n'
        '[sweep.zip]\n"insert.train.lr" = [0.001, 0.002]\n"insert.train.steps" = [5, 6]\n'
        '[sweep.random]\nn = 3\nseed = 4\n"insert.train.weight_decay" = {low = 0.001, high = 0.1, log = true}\n'
    )
    specs = expand(load_recipe(path))
    assert len(specs) == 2 * 2 * 2 * 3 == len({s.id for s in specs})
    again = expand(load_recipe(path))
    assert [s.id for s in specs] == [s.id for s in again]  # stable ids and seeded draws
    assert all(0.001 <= s.config.insert.train.weight_decay <= 0.1 for s in specs)
    assert {(s.config.insert.train.lr, s.config.insert.train.steps) for s in specs} == {(0.001, 5), (0.002, 6)}


# --- run identity ---------------------------------------------------------------------------------


def test_a_field_added_at_its_default_leaves_ids_alone():
    import dataclasses

    from petridish.sweep import run_id

    @dataclasses.dataclass(frozen=True)
    class Before:
        seed: int = 0
        lr: float = 1e-3

    @dataclasses.dataclass(frozen=True)
    class After:
        seed: int = 0
        lr: float = 1e-3
        new_option: bool = False

    assert run_id("toy", Before(seed=3)) == run_id("toy", After(seed=3))
    assert run_id("toy", After(seed=3, new_option=True)) != run_id("toy", After(seed=3))  # set, it counts


def test_the_config_version_is_part_of_the_id(monkeypatch):
    from petridish import sweep
    from petridish.experiments.persistence import PersistenceConfig

    before = sweep.run_id("persistence", PersistenceConfig(seed=1))
    monkeypatch.setattr(sweep, "CONFIG_VERSION", sweep.CONFIG_VERSION + 1)
    assert sweep.run_id("persistence", PersistenceConfig(seed=1)) != before


def test_setting_a_field_to_its_default_gives_the_same_runs():
    from petridish.sweep import expand

    plain = expand(load_recipe("experiments/sweep_smoke.toml", "quick"))
    again = expand(load_recipe("experiments/sweep_smoke.toml", "quick", ("eval.temperature=0.0", "model.mlp_ratio=4")))
    assert [s.id for s in plain] == [s.id for s in again]
