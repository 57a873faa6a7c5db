"""The one training loop (`worker`: the daemon's and `crystalline train`'s), composed of one part a
concern: what each step trains on (`batches`: the shuffle buffer of new text, replay and further
passes, withdrawals, the trained text in memory; `mixing`: each source's share of them), how good the model is (`evaluation`: held-out
bits per byte, the cool-down copy, the best model, the plateau rule; `sources`: which source a
document belongs to, for the held-out blocks and figures per source), when to evaluate and
checkpoint (`schedule`), what the loop reports (`figures`), when to deepen the model (`growth`,
a pure rule) and the growth of the live model (`grower`), what the checkpoints will take on disk
as it grows (`forecast`, pure, for `status`), and the model and stream position a start takes up
(`resume`). Then its checkpoint files and rows (`checkpoints`, the store every
command asks; it makes the rows agree with the files at a start by the rules of `reconcile`), and
the ranks of one job under MPI (`team`). Joins the store and the engine; may import
`crawler.config`, `crawler.state`, `crawler.ingest`, `crawler.logging`; knows nothing of the
daemon's threads, its HTTP interface or the command line."""
