"""The `nnx` command line: typer commands rendered with rich."""
