"""Where the YAML configs are: inside the installed package (a wheel), else the checkout's top-level ``conf/``.

``conf/`` at the top of the repository is the source; the wheel maps it to ``lenet_lightning/conf`` (see
``pyproject.toml``), so an installed package runs from any folder.
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
CONFIG_DIR = PACKAGE_DIR / "conf" if (PACKAGE_DIR / "conf").is_dir() else PACKAGE_DIR.parent / "conf"
