"""Classification metrics, and which direction is better for each."""

from __future__ import annotations

import numpy as np

# Metric name -> True when larger is better.
HIGHER_IS_BETTER = {"accuracy": True, "f1_macro": True, "roc_auc": True, "log_loss": False}


def evaluate(model, features, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, macro F1, log loss and (where defined) one-vs-rest ROC AUC."""
    # Imported here: loading the Dagster definitions must not pay for scikit-learn.
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    predicted = model.predict(features)
    metrics = {
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1_macro": float(f1_score(labels, predicted, average="macro")),
    }
    if hasattr(model, "predict_proba"):
        proba = model.predict_proba(features)
        classes = list(model.classes_)
        metrics["log_loss"] = float(log_loss(labels, proba, labels=classes))
        present = set(labels.tolist())
        # ROC AUC is undefined when the evaluated rows hold fewer than two classes.
        if len(present) >= 2 and present <= set(classes):
            if len(classes) == 2:
                metrics["roc_auc"] = float(roc_auc_score(labels, proba[:, 1]))
            else:
                metrics["roc_auc"] = float(roc_auc_score(labels, proba, multi_class="ovr", labels=classes))
    return metrics


def is_better(metric: str, candidate: float, incumbent: float) -> bool:
    """Strictly better: a tie keeps the incumbent (no churn for equal models)."""
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(HIGHER_IS_BETTER)}")
    return candidate > incumbent if HIGHER_IS_BETTER[metric] else candidate < incumbent
