"""User-facing errors: the CLI prints these as one line and exits with code 2."""


class EdgegenError(Exception):
    """A mistake in what the user asked for (bad path, bad option, broken artifact)."""
