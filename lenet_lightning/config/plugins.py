"""Let Hydra find the project's sweeper when the project is installed in editable mode (``pip install -e .``).

Hydra finds plugins by listing the folders of the ``hydra_plugins`` namespace package; an editable install serves
the project's modules through an import hook whose entry cannot be listed, so the sweeper would be missing
(``unknown hydra/sweeper 'lenet_optuna'``) unless the command starts in the project's folder.
"""

import importlib.util
from pathlib import Path

PLUGIN = "hydra_plugins.lenet_optuna_sweeper"


def make_project_plugins_findable() -> None:
    """Add the folder that holds the project's plugin to ``hydra_plugins.__path__`` when it is not listed there."""
    try:
        spec = importlib.util.find_spec(PLUGIN)
    except ImportError:  # no hydra_plugins namespace at all
        return
    if spec is None or spec.origin is None:
        return
    import hydra_plugins

    folder = str(Path(spec.origin).parent.parent)
    if folder not in list(hydra_plugins.__path__):
        hydra_plugins.__path__.append(folder)
