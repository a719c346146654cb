"""`bcsync`: the operator's command line (set-up and operations); see "Operating the service" in README.md."""
