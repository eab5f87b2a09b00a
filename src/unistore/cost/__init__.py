"""Cost: a dated price table of object-storage providers, a month's bill projected from
Observe's metrics or from a listing of a store, and the provider to use (``docs/cost.md``)::

    from unistore.cost import load_prices, project_all, recommend, scan_usage

    usage = await scan_usage(store)
    projections = project_all(usage, load_prices())
    print(recommend(usage, projections).reason)
"""

from ._calc import (
    GB,
    SMALL_OBJECT,
    Access,
    Plan,
    Price,
    PriceTable,
    Projection,
    Recommendation,
    Usage,
    access_pattern,
    load_prices,
    month_seconds,
    project,
    project_all,
    recommend,
    scan_usage,
    usage_from_metrics,
)

__all__ = [
    "Access",
    "GB",
    "Plan",
    "Price",
    "PriceTable",
    "Projection",
    "Recommendation",
    "SMALL_OBJECT",
    "Usage",
    "access_pattern",
    "load_prices",
    "month_seconds",
    "project",
    "project_all",
    "recommend",
    "scan_usage",
    "usage_from_metrics",
]
