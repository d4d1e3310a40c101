"""ganforge-superres: 4× super-resolution (and other image-to-image tasks) as a ganforge plugin.

Installing the package is all it takes: ganforge finds it through the ``ganforge`` entry-point
group (``ganforge_superres.plugin``), and recipes name its components.
"""

__version__ = "0.1.0"
