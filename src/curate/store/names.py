"""The alphabet of the names curate turns into directory names (subsets, embedding sets, captions sets).

Kept apart from :mod:`curate.store.root` so that the shells (the CLI's option declarations, the DAG
params) can use it without importing the table code.
"""

#: a subset / embedding-set / captions-set name, as a JSON-Schema pattern (also what safe_name checks)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$"
