"""The project's Optuna sweeper for Hydra, ``hydra/sweeper=lenet_optuna``.

Hydra finds it by importing every module of the ``hydra_plugins`` namespace package (no ``__init__.py`` there).
"""
