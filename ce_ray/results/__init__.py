"""Results: storage (every Parquet schema, atomic writes, paths and URIs), the sweep's tables,
the report and the plots. Imports ``configs``, ``presets`` and ``theory``; never Ray.
"""
