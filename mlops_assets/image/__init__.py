"""The API container image (see docker/api.Dockerfile): what goes into the build context, the
tag that names it, and finding or building it for a champion.

    requirements.py   the image's pinned requirements: the serving stack's dependency closure,
                      at the exact versions of this environment (setup.py's pins and what they
                      resolved to), and a local wheelhouse for them
    context.py        the build context (Dockerfile, serving code, model folder, requirements,
                      wheels) and its content tag (no Dagster, no engine)
    build.py          the image for a champion: found by its recipe or tag, else built through
                      the container engine resource; archive and push

The engine side is `mlops_assets.resources.container_engine`; the asset is
`mlops_assets.assets.packaging.container_image`.
"""
