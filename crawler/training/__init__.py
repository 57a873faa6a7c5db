"""The one training loop (`worker`: the daemon's and `crystalline train`'s), its checkpoint files
and rows (`checkpoints`, the store every command asks; it makes the rows agree with the files at
a start by the rules of `reconcile`), and the ranks of one job under MPI (`team`). Joins the store
and the engine; may import `crawler.config`, `crawler.state`, `crawler.ingest`, `crawler.logging`;
knows nothing of the daemon's threads, its HTTP interface or the command line."""
