"""Reliability, fast versions (the long ones: `python bench/reliability.py`): SIGKILL a sweep and
restart it, two runners on one store, weights that are not safetensors."""

import pickle
import random
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from petridish.config import ModelConfig
from petridish.errors import BadInput
from petridish.models import load_weights, make_model
from petridish.rng import make_generator
from petridish.scenarios import ScenarioConfig, make_scenario

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import reliability  # noqa: E402  (bench/reliability.py: the same harness, longer settings)


@pytest.fixture(scope="module")
def reference() -> dict:
    """sweep_smoke with tiny overrides, run once without interruption (shared with test_executors)."""
    return reliability.tiny_reference()


def test_sigkill_at_random_points_loses_and_duplicates_nothing(reference, tmp_path):
    report = reliability.kill_and_restart(
        tmp_path / "store",
        reference,
        kills=2,
        rng=random.Random(0),
        args=reliability.TINY,
        after_commit=True,
        max_delay=0.4,
    )
    assert report.kills == 2, report
    assert report.lost == [] and report.duplicated == [] and report.mismatched == [], report
    assert report.store_readable and report.runs == len(reference["metrics"]) == 16, report


def test_two_runners_on_one_store_do_each_run_once(reference, tmp_path):
    result = reliability.two_runners(tmp_path / "store", reference, reliability.TINY)
    assert result["exit_codes"] == [0, 0], (result["stderr"], result)  # stderr first: the dict is cut short
    assert result["done_exactly_once"] and result["each_run_done_or_reused_by_both"], result
    assert result["metrics_identical"] and result["store_readable"] and result["runs"] == 16, result


# --- weights: safetensors only, nothing is ever unpickled -------------------------------------


class Exploit:
    """A pickle that, if loaded, would create a file: the attack that safetensors-only prevents."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def tiny_model():
    scenario = make_scenario(ScenarioConfig(n_digits=3))
    return make_model(ModelConfig(preset="nano"), scenario, make_generator(0, "init"))


@pytest.mark.parametrize("kind", ["pickle exploit", "torch.save", "garbage", "truncated", "empty"])
def test_weights_that_are_not_safetensors_are_refused(tmp_path, kind):
    model, path, marker = tiny_model(), tmp_path / "weights.safetensors", tmp_path / "unpickled"
    if kind == "pickle exploit":
        path.write_bytes(pickle.dumps({"w": Exploit(marker)}))
    elif kind == "torch.save":
        torch.save(model.state_dict(), path)
    elif kind == "garbage":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(BadInput, match="not a valid safetensors file") as error:
        load_weights(model, path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()  # nothing was unpickled
    if kind == "pickle exploit":
        pickle.loads(path.read_bytes())
        assert marker.exists()  # the exploit is real: unpickling this file would have run it


def test_valid_safetensors_load_and_missing_file_is_named(tmp_path):
    source, target = tiny_model(), tiny_model()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    load_weights(target, tmp_path / "w.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    with pytest.raises(BadInput, match="weights file not found"):
        load_weights(target, tmp_path / "absent.safetensors")


# --- store corruptions and bad values (the same cases as `bench/reliability.py --checks store,values`) ---


def test_every_store_corruption_is_read_around_and_redone_without_loss(tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(reliability.TINY_RECIPE + "[sweep.grid]\nseed = [0, 1]\n")
    result = reliability.store_cases(tmp_path / "work", recipe, args=(), thorough=False)
    assert result["ok"] and result["failed"] == [] and result["runs"] == 2, result
    assert result["store_corruptions"] == len(reliability.INDEX_CORRUPTIONS) + len(reliability.RUN_DAMAGE) + 2


def test_every_bad_value_ends_in_exit_2_and_one_line(tmp_path):
    result = reliability.value_cases(tmp_path)
    assert result["ok"] and result["failed"] == [] and result["values_tried"] >= 16, result


def test_markdown_keeps_the_rows_of_checks_not_run():
    old = "\nCommand: `python bench/reliability.py` on 2 CPU cores.\n\n| check | result |\n|---|---|\n| two runners on one store, released together | kept |\n"
    text = reliability._section(
        {"bad_values": {"passed": 3, "values_tried": 3, "failed": [], "seconds": 1.0}},
        "python bench/reliability.py --checks values",
        old,
    )
    lines = text.splitlines()
    assert (
        "| two runners on one store, released together | kept |" in lines
        and lines[0] == "Command: `python bench/reliability.py` on 2 CPU cores."
    )
    assert any(line.startswith("| out-of-bounds values") and "3/3" in line for line in lines)
    assert any("--checks values" in line for line in lines)
