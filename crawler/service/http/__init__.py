"""The daemon's window: a small page and JSON API to watch it learn and talk to the live model.

`[http] listen = "127.0.0.1:8484"` (`crystalline run --http ADDR|off`) serves, with the standard
library's threaded server on threads of its own (training never waits on a request):

- `GET /`             the page (crawler/service/web/index.html: curves, files, figures, a prompt box)
- `GET /api/status`   what `status --json` shows, read from the daemon's own open store, plus
                      the trainer's live figures (held-out figure, plateau, idle, rate)
- `GET /api/history`  the evaluation history from the store (`since`: the last id seen) and
                      the train_step points logged since the daemon started (`since_step`)
- `GET /api/events`   every log event (info and up) as server-sent events, the JSON lines' fields
- `POST /api/generate` a completion from a snapshot of the live weights, streamed as NDJSON
- `GET /metrics`      the Prometheus text of crawler/service/metrics.py

Modules, each of one concern, in import order: `errors` (RequestError: how a refusal is said),
`access` (the token, Host and Origin checks), `events` (the event feed and its stream),
`reports` (what status and history say), `completion` (a completion's request and stream; its
settings' defaults and bounds are engine/sampling.py's), `handler` (routes, framing, the page
and its Content-Security-Policy), and `window` (`Window`, the thin front the daemon holds).
Callers use `Window` only. May import the rooms below crawler.service, crawler.service.status,
the engine's sampler and storage's queue; knows nothing of the daemon's workers beyond the
attributes the window reads.
"""

from .window import Window

__all__ = ["Window"]
