"""rankstream load scenarios and benchmark harness (`python -m loadtest <scenario>`).

Scenarios (see `python -m loadtest --help`):

- `all`: the full suite. Per size, a dataset (COPY, then the rebuild path), the API and a
  consumer, and every scenario (top-10, page after a cursor, rank, around-me, friends,
  single and batch submissions, a mixed profile with visibility probes) driven by wrk,
  over a size curve and a connections curve, then a soak; results JSON, RESULTS.md
  tables, and a PNG of the curves.
- `soak`: the mixed profile for a long while; memory of every process, Redis and the
  stream over time.
- `plot`, `report`: redraw the PNG, regenerate RESULTS.md.
- `ingest`: consumer throughput (pre-filled stream drained by one consumer process) and
  submit -> visible latency at a steady offered load through the HTTP API.
- `reads`: read throughput and latency of top-10, player rank and around-me on a board
  of 1,000,000 ranked players, driven by wrk.
- `rebuild`: rebuild of a 1,000,000-player board from Postgres.
- `baseline`: Litestar on granian answering a constant JSON, which issue 4 quotes for the
  machine its goals were set on: how fast this machine is, right now, against that one.

Every run starts its own embedded Redis and PostgreSQL in a fresh temporary folder (`all`
and `soak` can use given servers instead), talks to 127.0.0.1 only, stops everything it
started, and writes `loadtest/results/<date>-<host>[-<scenario>].json` plus its tables in
`loadtest/RESULTS.md`.
"""
