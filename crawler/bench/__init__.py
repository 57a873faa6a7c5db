"""`crystalline bench`: training throughput of the engine (`throughput`) and the PyTorch model of
the same architecture it is compared with (`torch_reference`, also the reference of the parity
tests). May import the engine and the rooms below it; not `crawler.service` or `crawler.cli`."""
