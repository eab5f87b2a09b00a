"""Storage backends, one module each (re-exported from ``unistore``)."""

__all__: list[str] = []
