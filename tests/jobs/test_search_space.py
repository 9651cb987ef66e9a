"""A search's space: each path and distribution checked with an error naming the path, each range's ends checked as a
job's settings, the objective a search optimises by default, and the samplers and pruners by name."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from core.jobs.kinds import FINE_TUNE, LANGUAGE_MODEL
from core.jobs.search_space import (
    AROUND_LR_FIND,
    SpaceError,
    around,
    default_metric,
    direction_of,
    distributions,
    grid_size,
    make_pruner,
    make_sampler,
    parse_space,
    trial_body,
)

BASE: dict[str, Any] = {"kind": "fine_tune", "dataset_id": "d", "size": 64}


@pytest.mark.parametrize(
    ("space", "path", "says"),
    [
        ({"lr": {"log_uniform": [0, 1]}}, "lr", "log_uniform needs a low above 0"),
        ({"lr": {"uniform": [0.1, 0.01]}}, "lr", "above its high"),
        ({"lr": {"log_uniform": [1e-3, 20]}}, "lr", "20.0 is not a legal value"),
        ({"lr": {"normal": [0, 1]}}, "lr", "or 'around_lr_find'"),
        ({"size": {"around_lr_find": 1}}, "size", "unknown distribution"),
        ({"size": AROUND_LR_FIND}, "size", "for lr only"),
        ({"size": {"uniform": [32.5, 64]}}, "size", "whole-number bounds"),
        ({"bs": {"choice": [64, 8192]}}, "bs", "8192 is not a legal value"),
        ({"arch": {"choice": ["resnet18", "alexnet"]}}, "arch", "unknown architecture 'alexnet'"),
        ({"arch": {"choice": ["resnet18", "resnet18"]}}, "arch", "distinct"),
        ({"epochs": {"choice": [2, 4]}}, "epochs", "the search's budget"),
        ({"seed": {"choice": [1, 2]}}, "seed", "the same validation items"),
        ({"transforms": {"choice": [1]}}, "transforms", "transforms.max_rotate"),
        ({"transforms.spin": {"uniform": [0, 1]}}, "transforms.spin", "not a setting of transforms"),
        ({"arch_config.depth": {"choice": [1]}}, "arch_config.depth", "emb_sz"),
        ({"lr.low": {"uniform": [0, 1]}}, "lr.low", "not a field of a job"),
        ({"size": {"choice": [64, 128]}}, "size", "set in the base job too"),
        ({"lr": {"uniform": [float("inf"), 1]}}, "lr", "two finite numbers"),
    ],
)
def test_a_bad_space_names_its_path(space: dict[str, Any], path: str, says: str) -> None:
    with pytest.raises(SpaceError) as caught:
        parse_space(space, BASE)
    assert caught.value.path == path and says in caught.value.message, caught.value.message


def test_a_space_becomes_optunas_distributions_and_trial_bodies() -> None:
    base = {k: v for k, v in BASE.items() if k != "size"}
    space = parse_space(
        {
            "lr": AROUND_LR_FIND,
            "size": {"log_uniform": [32, 128]},
            "arch": {"choice": ["resnet18", "efficientnet_lite0"]},
            "transforms.max_rotate": {"uniform": [0, 20]},
            "arch_config.n_hid": {"choice": [64, 128]},
        },
        base,
    )
    dists = distributions(space, around(3e-3))
    lr = dists["lr"]
    assert isinstance(lr, optuna.distributions.FloatDistribution) and lr.log
    assert (lr.low, lr.high) == pytest.approx((3e-4, 3e-2))
    assert dists["size"] == optuna.distributions.IntDistribution(32, 128, log=True)
    assert around(5.0) == (0.5, 9.99) and around(1e-9)[0] == 1e-7  # inside the legal (0, 10)
    body = trial_body({**base, "transforms": {"max_zoom": 1.2}}, {"lr": 0.01, "transforms.max_rotate": 5.0})
    assert body["transforms"] == {"max_zoom": 1.2, "max_rotate": 5.0} and body["lr"] == 0.01
    with pytest.raises(SpaceError, match="only choice dimensions"):
        grid_size(space)
    assert grid_size(parse_space({"lr": {"choice": [0.1, 0.01]}, "bs": {"choice": [16, 32, 64]}}, base)) == 6


def test_the_default_objective_is_the_tasks_main_metric_or_the_kinds_own() -> None:
    labels = {"target_kind": "label", "labels": {}}
    assert default_metric(FINE_TUNE, labels) == "error_rate" and direction_of("error_rate") == "minimize"
    assert default_metric(FINE_TUNE, {"target_kind": "label", "labels": {"label_delim": " "}}) == "fbeta"
    assert default_metric(FINE_TUNE, {"target_kind": "mask"}) == "mean_iou" and direction_of("mean_iou") == "maximize"
    assert default_metric(FINE_TUNE, {"target_kind": "text", "labels": {}}) == "accuracy"
    assert default_metric(LANGUAGE_MODEL, {"target_kind": "text"}) == "perplexity"


def test_one_seed_samples_the_same_trials_and_pruners_go_by_name() -> None:
    space = parse_space({"lr": {"log_uniform": [1e-5, 1.0]}}, BASE)
    drawn = []
    for _ in range(2):
        study = optuna.create_study(sampler=make_sampler("random", space, 7))
        drawn.append([study.ask(distributions(space, None)).params["lr"] for _ in range(3)])
    assert drawn[0] == drawn[1] and len(set(drawn[0])) == 3
    assert isinstance(make_pruner("asha"), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner("median"), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("none"), optuna.pruners.NopPruner)
