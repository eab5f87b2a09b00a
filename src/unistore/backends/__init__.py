"""Storage backends, one module each."""
