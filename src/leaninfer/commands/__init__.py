"""CLI command groups, one module each. Each module defines `register(app, bench)`."""
