"""The running daemon, one concern a module: `crystalline run`'s wiring (`daemon`), the
supervisor's start, tick, stop and signals (`supervisor`), the parts it builds and starts
(`parts`), the ingest worker (`ingest_worker`), the worker threads and their restart backoff
(`threads`), health.json, the status event and the metrics endpoint (`reporting`), the exit
statuses and DaemonError (`exits`), the one judge of "store unavailable" they share
(`outage`), systemd's notify protocol (`notify`), the page and JSON API (`http`, `web/`),
Prometheus metrics (`metrics`), the status report that `crystalline status` prints too
(`status`), and the daemon as a child process followed through its events, for the end-to-end
tests and bench/daemon.py (`child`). May import every room below it; not `crawler.bench` or
`crawler.cli`."""
