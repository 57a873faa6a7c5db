"""The running daemon: the supervisor and its ingest and training workers (`daemon`), the one
judge of "store unavailable" they share (`outage`), systemd's notify protocol (`notify`), the
page and JSON API (`http`, `web/`), Prometheus metrics (`metrics`), the status report that
`crystalline status` prints too (`status`), and the daemon as a child process followed through
its events, for the end-to-end tests and bench/daemon.py (`child`). May import every room below it; not `crawler.bench` or `crawler.cli`."""
