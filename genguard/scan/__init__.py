"""Bulk scanning and dataset curation on Ray Data: `genguard scan` and `genguard scan select` (docs/scan.md).

Needs the `scan` extra (ray[data], pyarrow, duckdb, s3fs, webdataset); nothing here is imported by
`genguard detect`. Modules: sources (listing, reading), score (Ray stages, dedupe), schema (the output's Arrow
schema), output (parts, resume, summary), run (the driver), select (curation), cli.
"""
