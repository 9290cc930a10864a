"""System profiles shipped with scanctl (``--system NAME`` finds ``NAME.toml`` here)."""
