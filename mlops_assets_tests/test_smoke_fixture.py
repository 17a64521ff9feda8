def test_trained_home_has_champion(trained_home):
    from mlops_assets.resources.mlflow_registry import MlflowRegistry

    settings = trained_home["settings"]
    registry = MlflowRegistry(tracking_uri=settings.tracking_uri, artifact_root=str(settings.artifact_root))
    champion = registry.champion(settings.model_name)
    assert champion is not None
    assert champion.version == trained_home["selected"].version
