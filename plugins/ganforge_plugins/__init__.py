"""ganforge's built-in plugins, registered through the ``ganforge`` entry-point group.

Each module here is one plugin, listed in ``[project.entry-points.ganforge]`` of ganforge's
``pyproject.toml``, exactly as a third-party package would list its own.
"""
