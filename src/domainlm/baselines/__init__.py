"""Baselines that learned tags are compared against, in the same harness and on the same splits."""

from domainlm.baselines.classical import (
    TaskFeatures,
    featurize_task,
    fit_predict,
    make_regressor,
    method_names,
    register_method,
    run_baseline,
)

__all__ = [
    "TaskFeatures",
    "featurize_task",
    "fit_predict",
    "make_regressor",
    "method_names",
    "register_method",
    "run_baseline",
]
