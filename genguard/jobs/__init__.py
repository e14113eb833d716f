"""Async jobs: POST /v1/jobs takes what /v1/detect takes, answers 202 at once, and workers answer the items
later, calling back a signed webhook (docs/jobs.md). Store: SQLite by default, PostgreSQL for several replicas."""
