"""Candidate model families: each a scikit-learn Pipeline that owns its preprocessing, so
whoever serves it can pass raw feature values (strings, numbers, missing values)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

# scikit-learn is imported inside the builders: loading the Dagster definitions (every
# `make run`, every `dagster dev` reload) must not pay for it.
if TYPE_CHECKING:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline


def _one_hot_preprocessor(numeric: list[str], categorical: list[str]) -> "ColumnTransformer":
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    return ColumnTransformer(
        [
            ("numeric", Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]), numeric),
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
                        ("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                    ]
                ),
                categorical,
            ),
        ]
    )


def _ordinal_preprocessor(numeric: list[str], categorical: list[str]) -> "ColumnTransformer":
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    # Trees need no scaling; unknown categories become their own code instead of an error.
    return ColumnTransformer(
        [
            ("numeric", SimpleImputer(strategy="median"), numeric),
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
                        ("encode", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)),
                    ]
                ),
                categorical,
            ),
        ]
    )


def logistic_regression(numeric, categorical, params: dict[str, Any], seed: int) -> "Pipeline":
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    return Pipeline(
        [
            ("preprocess", _one_hot_preprocessor(numeric, categorical)),
            ("model", LogisticRegression(C=params.get("C", 1.0), max_iter=params.get("max_iter", 1000), random_state=seed)),
        ]
    )


def random_forest(numeric, categorical, params: dict[str, Any], seed: int) -> "Pipeline":
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline

    return Pipeline(
        [
            ("preprocess", _ordinal_preprocessor(numeric, categorical)),
            (
                "model",
                RandomForestClassifier(
                    n_estimators=params.get("n_estimators", 100),
                    max_depth=params.get("max_depth"),
                    min_samples_leaf=params.get("min_samples_leaf", 1),
                    random_state=seed,
                    n_jobs=1,
                ),
            ),
        ]
    )


def hist_gradient_boosting(numeric, categorical, params: dict[str, Any], seed: int) -> "Pipeline":
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline

    return Pipeline(
        [
            ("preprocess", _ordinal_preprocessor(numeric, categorical)),
            (
                "model",
                HistGradientBoostingClassifier(
                    learning_rate=params.get("learning_rate", 0.1),
                    max_iter=params.get("max_iter", 100),
                    max_leaf_nodes=params.get("max_leaf_nodes", 31),
                    random_state=seed,
                ),
            ),
        ]
    )


FAMILIES: dict[str, Callable[..., "Pipeline"]] = {
    "logistic_regression": logistic_regression,
    "random_forest": random_forest,
    "hist_gradient_boosting": hist_gradient_boosting,
}


def build_pipeline(family: str, numeric: list[str], categorical: list[str], params: dict[str, Any], seed: int) -> "Pipeline":
    try:
        factory = FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; choose from {', '.join(FAMILIES)}") from None
    return factory(numeric, categorical, params, seed)
