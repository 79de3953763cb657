"""Base models: the catalog, the resolver (path → cache → hub → offline package) and loaders."""

from tunelab.models.catalog import CATALOG, DEFAULT_MODEL, lookup
from tunelab.models.resolve import ResolvedModel, resolve_model

__all__ = ["CATALOG", "DEFAULT_MODEL", "lookup", "ResolvedModel", "resolve_model"]
