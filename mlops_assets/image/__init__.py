"""The API container image, without Dagster or an engine: what goes into the build context
and the tag that names it (see docker/api.Dockerfile).

    requirements.py   the image's pinned requirements: the serving stack's dependency closure,
                      at the exact versions of this environment (setup.py's pins and what they
                      resolved to), and a local wheelhouse for them
    context.py        the build context (Dockerfile, serving code, model folder, requirements,
                      wheels) and its content tag

The engine side is `mlops_assets.resources.container_engine`; the asset is
`mlops_assets.assets.packaging.container_image`.
"""
