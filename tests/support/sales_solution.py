"""The Sales-side solution installed as set-up leaves it (see `devstack.sales_solution`)."""

from devstack.sales_solution import install, packed

__all__ = ["install", "packed"]
