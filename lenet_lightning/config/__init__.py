"""The configuration: where the YAML files are, the schema every user key is checked against, one-line errors.

Importing the package registers the schemas in Hydra's ConfigStore: the defaults lists of ``conf/*.yaml``
name them, so every composition (the commands, the tests, the benchmark) is typed by them.
"""

from lenet_lightning.config.schema import register_schemas

register_schemas()
