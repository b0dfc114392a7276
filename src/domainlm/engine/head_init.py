"""Starting a function tag's head from its training read-outs, before any gradient step.

* "zero" (the paper): identity standardisation, zero weights;
* "standardized": the head's input is centred and scaled by the training read-outs' mean and standard
  deviation, weights zero (a conditioning fix only: the same function class);
* "probe": standardised, and a linear head set to the closed-form fit on those read-outs (ridge with its
  penalty chosen by leave-one-out, or logistic regression), so training starts where a linear probe ends
  and the tags improve on it (linear probing then fine-tuning, Kumar et al., ICLR 2022).
"""

from __future__ import annotations

import numpy as np
import torch

from domainlm.engine.model import TaggedModel
from domainlm.errors import DomainLMError

HEAD_INITS = ("zero", "standardized", "probe")
RIDGE_ALPHAS = tuple(10.0**k for k in np.arange(-2, 5, 0.5))


@torch.no_grad()
def initialize_head(tm: TaggedModel, function_tag: str, features: np.ndarray, labels, how: str) -> dict:
    """Set `function_tag`'s head from `features` [N, d] (its read-outs on the training inputs) and their
    labels; returns what was fitted, for the run's metrics."""
    if how not in HEAD_INITS:
        raise DomainLMError(f"head initialisation must be one of {HEAD_INITS}, got {how!r}")
    if how == "zero":
        return {"head_init": how}
    head, spec = tm.heads[function_tag], tm.specs[function_tag].head
    if how == "probe" and spec.hidden:
        raise DomainLMError("head initialisation 'probe' fits a linear head; drop the MLP (head hidden = 0)")
    x = np.asarray(features, dtype=np.float64)
    center, std = x.mean(axis=0), x.std(axis=0)
    scale = np.maximum(std, max(1e-3 * float(std.mean()), 1e-12))  # constant dimensions stay finite
    head.center.copy_(torch.as_tensor(center, dtype=torch.float32))
    head.scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
    info = {"head_init": how, "n_features": int(x.shape[0])}
    if how == "probe":
        z = (x - center) / scale
        weight, bias, fitted = _fit_linear(z, labels, spec)
        head.linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        head.linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        info.update(fitted)
    return info


def _fit_linear(z: np.ndarray, labels, spec) -> tuple[np.ndarray, np.ndarray, dict]:
    if spec.type == "regression":
        from sklearn.linear_model import RidgeCV

        target = (np.asarray(labels, dtype=np.float64) - spec.label_mean) / spec.label_std
        ridge = RidgeCV(alphas=RIDGE_ALPHAS).fit(z, target)
        train_mse = float(np.mean((ridge.predict(z) - target) ** 2))  # standardised units
        return (
            ridge.coef_[None, :],
            np.array([ridge.intercept_]),
            {
                "probe_alpha": float(ridge.alpha_),
                "probe_train_mse_standardized": round(train_mse, 6),
            },
        )
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(labels, dtype=int)
    logistic = LogisticRegression(max_iter=2000).fit(z, y)
    weight = np.zeros((spec.n_classes, z.shape[1]))
    bias = np.full(spec.n_classes, -10.0)  # a class absent from training stays unlikely
    coef, intercept = logistic.coef_, logistic.intercept_
    if len(logistic.classes_) == 2:  # sklearn keeps one row for two classes: logit(class 1) - logit(class 0)
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    for row, cls in enumerate(logistic.classes_):
        weight[cls], bias[cls] = coef[row], intercept[row]
    accuracy = float(logistic.score(z, y))
    return weight, bias, {"probe_train_accuracy": round(accuracy, 4)}
