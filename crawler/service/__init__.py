"""The running daemon: the supervisor and its ingest and training workers (`daemon`), systemd's
notify protocol (`notify`), the page and JSON API (`http`, `web/`), Prometheus metrics
(`metrics`), and the status report that `crystalline status` prints too (`status`). May import
every room below it; not `crawler.bench` or `crawler.cli`."""
