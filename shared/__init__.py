"""bc-dataverse-sync: the library behind the Azure Functions app, the `bcsync` CLI and the dev stack."""

# The one place the version is written: pyproject.toml reads it ([tool.setuptools.dynamic]) and
# GET /api/health reports it.
__version__ = "0.1.0"
