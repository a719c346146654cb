"""Azure Functions blueprints: each parses its trigger, calls `shared`, and returns."""
