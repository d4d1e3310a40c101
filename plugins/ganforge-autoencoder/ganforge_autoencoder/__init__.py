"""ganforge-autoencoder: a VQGAN-style adversarial autoencoder as a ganforge plugin.

Installing the package is all it takes: ganforge finds it through the ``ganforge`` entry-point
group (``ganforge_autoencoder.plugin``), and recipes name its components.
"""

__version__ = "0.1.0"
