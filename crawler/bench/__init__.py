"""`crystalline bench`: training throughput of the engine (`throughput`, written out by `report`)
and the PyTorch model of the same architecture it is compared with (`torch_reference`, also the
reference of the parity tests); the state directory's own model and the time to one pass over its
stored text (`your_model`); and the shared harness of the bench/ scripts (`harness`: the
daemon, the corpus, bits per byte; `results`: the rows they record and the commit each names).
May import the engine and the rooms below it; not `crawler.cli`, and `crawler.service` only for
the harness's daemon (crawler.service.child), which `crystalline bench` never imports, and for
the store's figures and the model a state directory trains (crawler.service.status, opening)."""
