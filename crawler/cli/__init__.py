"""The command line: the parser and `main` (`main`), and one module per command group (`service`:
run, init, pause, resume; `corpus`: ingest, status, forget; `state`: repair, reset, backup;
`plot`), with terminal progress bars (`progress`). The top room: may import every other."""
