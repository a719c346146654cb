"""`bcsync`: the operator's command line (set-up and operations); see docs/operations.md."""
