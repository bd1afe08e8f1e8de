"""Preprocessing: fitted on the training split only, the built-ins' formulas, the study-file key
(left out of the resolved config when empty), caching, stacking groups and the preflight."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import the_preflight_problem

from dlbench.datacache import DataCache
from dlbench.errors import ConfigError
from dlbench.preprocessing import apply
from dlbench.train import make
from dlbench.planning import stack_key

# the config hash of the conftest tiny baseline (make_trials()), recorded before preprocessing existed
TINY_BASELINE_HASH = "f2f74e06da249011d800f2aeeb6df96d65bcbe86173fde62117c00bb2e40a38d"


def fitted(registry, data, *specs):
    for spec in specs:
        spec = {"name": spec} if isinstance(spec, str) else spec
        data = apply(make(registry, "preprocessing", spec), spec["name"], data)
    return data


def correlated(n: int = 400, d: int = 6, seed: int = 0) -> torch.Tensor:
    """Examples of ``d`` correlated features of different scales, full rank."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) * torch.linspace(0.2, 3.0, d)
    return torch.randn(n, d, generator=g) @ mix + torch.arange(d, dtype=torch.float32)


def with_train(data, x):
    """``data`` with ``x`` as its training inputs (val and test: different examples, same shape)."""
    n = len(x)
    return replace(data, x_train=x, y_train=data.y_train[:n] if len(data.y_train) >= n else data.y_train,
                   x_val=x[: n // 4] * 3 + 1, x_test=x[: n // 3] - 5, input_shape=tuple(x.shape[1:]))


def covariance(x: torch.Tensor) -> torch.Tensor:
    rows = x.reshape(len(x), -1).double()
    centered = rows - rows.mean(0)
    return centered.T @ centered / len(rows)


@pytest.mark.parametrize("step", ["center", "standardize", {"name": "pca", "variance": 0.9}, "zca"])
def test_fitted_on_the_training_split_only(registry, tiny_data, step):
    """Changing the validation and test inputs changes nothing that was fitted: the training
    split transforms identically and the summary is the same."""
    a = fitted(registry, tiny_data, step)
    other = replace(tiny_data, x_val=torch.randn_like(tiny_data.x_val) * 7, x_test=tiny_data.x_test.flip(0) + 3)
    b = fitted(registry, other, step)
    assert torch.equal(a.x_train, b.x_train)
    assert a.preprocessing == b.preprocessing
    assert not torch.equal(a.x_test, b.x_test)
    # and the test split went through the same function as the training split
    c = fitted(registry, replace(tiny_data, x_test=tiny_data.x_train[:7]), step)
    torch.testing.assert_close(c.x_test, a.x_train[:7], rtol=0, atol=1e-5)


def test_center_per_feature_and_per_channel(registry, tiny_data):
    x = fitted(registry, tiny_data, "center").x_train
    assert x.double().mean(0).abs().max() < 1e-5
    images = torch.rand(50, 3, 4, 5) + torch.tensor([0.0, 2.0, -1.0])[:, None, None]
    data = fitted(registry, with_train(tiny_data, images), {"name": "center", "per": "channel"})
    means = data.x_train.double().mean((0, 2, 3))
    assert means.abs().max() < 1e-6 and data.input_shape == (3, 4, 5)
    assert data.x_train.double().mean((0,)).abs().max() > 0.01  # not per pixel
    assert data.preprocessing == ("center: subtracted the mean of each channel (3 values)",)


def test_standardize_gives_mean_0_std_1_and_leaves_constant_features_unscaled(registry, tiny_data):
    x = correlated()
    x[:, 2] = 4.0  # a constant feature
    data = fitted(registry, with_train(tiny_data, x), "standardize")
    mean, std = data.x_train.double().mean(0), data.x_train.double().std(0, correction=0)
    assert mean.abs().max() < 1e-6
    torch.testing.assert_close(std[[0, 1, 3, 4, 5]], torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-5)
    assert torch.equal(data.x_train[:, 2], torch.zeros(len(x)))
    assert torch.isfinite(data.x_test).all()
    assert data.preprocessing == ("standardize: 6 features to mean 0, std 1 (1 constant: centered only)",)


def test_pca_keeps_the_requested_variance_with_orthonormal_components(registry, tiny_data):
    x = correlated()
    step = make(registry, "preprocessing", {"name": "pca", "variance": 0.9})
    data = apply(step, "pca", with_train(tiny_data, x))
    k = data.input_shape[0]
    eigenvalues = torch.linalg.eigvalsh(covariance(x)).flip(0)
    share = eigenvalues.cumsum(0) / eigenvalues.sum()
    assert share[k - 1] >= 0.9 > share[k - 2]  # the fewest components that keep 90%
    assert data.x_train.shape == (len(x), k) and data.x_test.shape[1:] == (k,)
    basis = step.basis.double()
    torch.testing.assert_close(basis.T @ basis, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-5)
    # the projections are uncorrelated, each with its eigenvalue as variance
    torch.testing.assert_close(covariance(data.x_train), torch.diag(eigenvalues[:k]), rtol=0, atol=1e-3)
    assert data.preprocessing == (f"pca: {k} of 6 components, {100 * float(share[k - 1]):.1f}% of variance",)


def test_pca_components_and_whitening(registry, tiny_data):
    data = fitted(registry, tiny_data, {"name": "pca", "components": 12, "whiten": True})
    assert data.input_shape == (12,) and data.x_val.shape[1:] == (12,)
    torch.testing.assert_close(covariance(data.x_train), torch.eye(12, dtype=torch.float64), rtol=0, atol=1e-3)
    assert data.preprocessing[0].startswith("pca: 12 of 40 components, ") and "whitened" in data.preprocessing[0]
    with pytest.raises(ValueError, match="components = 41 is more than the 40 features"):
        fitted(registry, tiny_data, {"name": "pca", "components": 41})
    with pytest.raises(ValueError, match="not both"):
        make(registry, "preprocessing", {"name": "pca", "components": 3, "variance": 0.5})


def test_zca_whitens_and_keeps_the_shape(registry, tiny_data):
    images = correlated(d=12).reshape(-1, 3, 4)  # 12 features as a 3 x 4 "image"
    data = fitted(registry, with_train(tiny_data, images), {"name": "zca", "eps": 1e-6})
    assert data.x_train.shape == images.shape and data.input_shape == (3, 4)
    torch.testing.assert_close(covariance(data.x_train), torch.eye(12, dtype=torch.float64), rtol=0, atol=1e-3)
    # ZCA's W is symmetric: of all whitenings, the one closest to the input
    step = make(registry, "preprocessing", {"name": "zca"})
    step.fit(images)
    torch.testing.assert_close(step.w, step.w.T)


def test_an_empty_preprocessing_list_is_left_out_of_the_config(make_trials):
    (trial,) = make_trials()
    assert "preprocessing" not in trial.config
    assert trial.config_hash == TINY_BASELINE_HASH  # existing stores resume, `reproduce` matches
    (same,) = make_trials({"preprocessing": []})
    assert same.config_hash == TINY_BASELINE_HASH
    (pca,) = make_trials({"preprocessing": ["standardize", {"name": "pca", "variance": 0.95}]})
    assert pca.config["preprocessing"] == [
        {"name": "standardize"}, {"name": "pca", "components": None, "variance": 0.95, "whiten": False, "eps": 1e-5}]
    assert pca.config_hash != TINY_BASELINE_HASH


def test_study_file_errors_name_the_key(make_trials):
    with pytest.raises(ConfigError) as err:
        make_trials(levels={"a": {"preprocessing": ["standardise"]}, "b": {"preprocessing": [{"name": "pca", "variance": 2}]},
                            "c": {"preprocessing": "zca"}})
    problems = err.value.problems
    assert any(p.startswith("studies.s.levels.a.preprocessing[0]: unknown preprocessing 'standardise'")
               and "did you mean 'standardize'" in p for p in problems), problems
    assert any(p.startswith("studies.s.levels.b.preprocessing[0].variance: must be > 0 and <= 1") for p in problems), problems
    assert any(p.startswith("studies.s.levels.c.preprocessing: expected a list") for p in problems), problems


def test_fitted_once_per_dataset_and_steps(registry, make_trials):
    cache = DataCache()
    a, b, c = make_trials(levels={"a": {"preprocessing": ["standardize"]}, "b": {"preprocessing": ["standardize"]},
                                  "c": {}})
    cpu = torch.device("cpu")
    first = cache.for_config(a.config, registry, cpu)
    assert cache.for_config(b.config, registry, cpu) is first
    raw = cache.for_config(c.config, registry, cpu)
    assert raw.preprocessing == () and first.preprocessing[0].startswith("standardize: 40 features")
    assert first.content_hash == raw.content_hash  # the dataset's hash: the steps are in the config


def test_trials_of_different_preprocessing_do_not_stack(registry, make_trials):
    a, b, c = make_trials(levels={"a": {"preprocessing": ["center"]}, "b": {"preprocessing": ["standardize"]},
                                  "c": {"preprocessing": ["center"]}})
    keys = [stack_key(t, registry)[0] for t in (a, b, c)]
    assert None not in keys and keys[0] == keys[2] != keys[1]


def test_preflight_fits_the_steps_and_names_the_key(tmp_path, registry, make_trials):
    trials = make_trials(levels={"ok": {"preprocessing": [{"name": "pca", "components": 8}]},
                                 "bad": {"preprocessing": ["center", {"name": "pca", "components": 50}]}})
    problem = the_preflight_problem(trials, registry, tmp_path)
    assert problem.startswith("studies.s.levels.bad.preprocessing[1] (preprocessing 'pca' [built-in]) raised "
                              "ValueError: components = 50 is more than the 40 features"), problem
    assert "when fitted and applied" in problem and "1 trial: s/bad" in problem


class Started:
    """A hook relay that keeps each trial's ``dlbench_trial_start`` info; other hooks do nothing."""

    def __init__(self):
        self.info = {}

    def dlbench_trial_start(self, trial, model, info):
        self.info[trial.index] = info

    def __getattr__(self, name):
        return lambda **kwargs: None


def test_a_stack_on_preprocessed_data_equals_its_members_trained_alone(registry, make_trials):
    """PCA changes the input shape; the stack's members train on the same fitted data as alone."""
    from dlbench.execution import execute
    from dlbench.planning import Work, plan, stack_id

    trials = make_trials({"preprocessing": ["standardize", {"name": "pca", "components": 12}]},
                         levels={"slow": {"optimizer": {"lr": 0.003}}, "fast": {}})
    (work,) = plan(trials, registry, max_size=8)
    assert work.stacked
    cpu, cache, hooks = torch.device("cpu"), DataCache(), Started()
    together = dict((t.index, r) for t, r in execute(work, registry, hooks, cache, cpu, None))
    for trial in trials:
        (_, result), = execute(Work((trial,), stack_id([trial])), registry, Started(), cache, cpu, None)
        assert together[trial.index].status == result.status == "finished"
        for x, y in zip(together[trial.index].history, result.history, strict=True):
            assert x == pytest.approx(y, rel=1e-4, abs=1e-4)
        info = hooks.info[trial.index]
        assert info["stack"]["size"] == 2 and info["preprocessing"][1].startswith("pca: 12 of 40 components")
