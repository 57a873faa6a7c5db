"""The state directory: disk use by part and the caps on the folders that grow (`disk`), whether
the state can be written and what to do when it cannot (`writable`), the daemon's lock and health
files (`health`), and the crawler's one folder walker (`walk`), which the watcher and the ingest
commands use too. Imports `crawler.logging` and nothing else of the crawler."""
