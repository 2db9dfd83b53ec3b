"""rankstream load scenarios and benchmark harness (`python -m loadtest <scenario>`).

Scenarios (see `python -m loadtest --help`):

- `ingest`: consumer throughput (pre-filled stream drained by one consumer process) and
  submit -> visible latency at a steady offered load through the HTTP API.
- `reads`: read throughput and latency of top-10, player rank and around-me on a board
  of 1,000,000 ranked players, driven by wrk.

Every run starts its own embedded Redis and PostgreSQL in a fresh temporary folder, talks
to 127.0.0.1 only, stops everything it started, and writes
`loadtest/results/<date>-<host>-<scenario>.json` plus a table in `loadtest/RESULTS.md`.
"""
