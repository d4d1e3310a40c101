"""ganforge-stylegan2: StyleGAN2 (Karras et al. 2020) as a ganforge plugin.

Installing the package is all it takes: ganforge finds it through the ``ganforge`` entry-point
group (``ganforge_stylegan2.plugin``), and recipes name its components.
"""

__version__ = "0.1.0"
