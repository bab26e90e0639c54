"""The configuration: where the YAML files are, the schema every user key is checked against, one-line errors."""
