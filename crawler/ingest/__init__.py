"""Files to tokens in the store: watching folders (`watcher`, the debounce, which keeps one
watchdog observer per root running with `observers` and takes its candidate files and their
versions from `candidates`), claiming a file among several daemons (`claiming`), extracting text
(`extract`, the front, which parses a file in this process, `inprocess`, or in a child process,
`sandbox`; below them, in the order they import each other: `terms`, the limits and skip
reasons all of them speak; `compressed`, single gzip, bzip2 and xz files; `archives`, tar and
zip archives of documents and their members; `kinds`, what a file is; the parsers `html` (an
HTML page's main text), `formats` (JSON, CSV, PDF, DOCX, EPUB, and HTML through `html`),
`troff_inline` and `troff` (man pages) and `info` (GNU info); each imports only those named
before it), tokenizers (`tokenizer`), the pipeline that stores a document once
(`pipeline`), and reading files for the offline `eval` (`data`). May import `crawler.state`,
`crawler.logging`, the store; knows nothing of the model, the training loop or the daemon."""
