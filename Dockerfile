# crystalline: the continuous-training daemon in a container. Run it with docs/DEPLOY.md:
#   docker build -t crystalline .
#   docker run -d --name crystalline -v crystalline-data:/data -v "$PWD/inbox:/inbox" crystalline
#   docker stop -t 90 crystalline      (the default 10 s may cut the final checkpoint short)
#
# The base is a build argument: the official python:3.11-slim on Debian 12 (bookworm) by default,
# or any Debian 12 with python3 and python3-venv (CI builds on one made with mmdebstrap:
# tests/deploy/). tini comes from the base when it has it (Debian's /usr/bin/tini), else from apt,
# pinned to bookworm's version.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

# tini is PID 1: it forwards SIGTERM to the daemon and reaps any child processes.
RUN if [ ! -x /usr/bin/tini ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# A fixed numeric uid/gid, so volume ownership is predictable (chown 10001:10001 a host folder).
# (Written into /etc/passwd and /etc/group directly: a minimal Debian has no useradd.)
RUN echo "crystalline:x:10001:" >>/etc/group \
    && echo "crystalline:x:10001:10001:crystalline:/data:/usr/sbin/nologin" >>/etc/passwd \
    && mkdir -p /data /inbox /opt/crystalline/numba-cache \
    && chown 10001:10001 /data /inbox /opt/crystalline/numba-cache

# A virtualenv of its own, first on PATH (Debian's python3 refuses a system-wide pip install).
# Into it, the dependencies exactly as locked (requirements.lock: every version pinned, every
# file's hash checked), then the package alone; the sources are then removed, so only the
# installed copy under the venv's site-packages is ever imported.
ENV VIRTUAL_ENV=/opt/crystalline/venv
ENV PATH=/opt/crystalline/venv/bin:$PATH
COPY requirements.lock /tmp/src/
RUN python3 -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir --disable-pip-version-check --require-hashes -r /tmp/src/requirements.lock
COPY pyproject.toml README.md LICENSE /tmp/src/
COPY engine /tmp/src/engine
COPY storage /tmp/src/storage
COPY crawler /tmp/src/crawler
RUN pip install --no-cache-dir --disable-pip-version-check --no-deps /tmp/src \
    && pip check \
    && rm -rf /tmp/src

ENV CRYSTALLINE_STATE_DIR=/data \
    CRYSTALLINE_WATCH_ROOTS=/inbox \
    NUMBA_CACHE_DIR=/opt/crystalline/numba-cache \
    PYTHONUNBUFFERED=1 \
    CRYSTALLINE_HTTP_LISTEN=off
# The page and API are off in the image unless configured: -e CRYSTALLINE_HTTP_LISTEN=0.0.0.0:8484
# with a token (CRYSTALLINE_HTTP_TOKEN_FILE=/run/secrets/...) and -p 127.0.0.1:8484:8484 (docs/DEPLOY.md).

# Warm numba's cache: compile every kernel once, as the runtime user, into NUMBA_CACHE_DIR.
# numba keys its cache by the source file's path and mtime (and by the CPU), so this runs after
# the install and against the installed files. threads=2 and crystalline_weight > 0 reach the
# reduction and the crystalline cost kernels too. On a host whose CPU differs from the build
# machine's the first start compiles again (about 10 s) and adds its entries to the same folder.
USER 10001:10001
WORKDIR /data
RUN python -c "import numpy as np; from engine import ModelConfig, TrainConfig, Trainer; \
model = ModelConfig(context_length=16, d_model=16, n_layer=1, n_head=2).validate(); \
train = TrainConfig(batch_size=2, seq_len=16, threads=2, warmup_steps=0, crystalline_weight=0.1).validate(model); \
tokens = np.zeros((2, 16), dtype=np.int32); trainer = Trainer(model, train); \
trainer.step(tokens, tokens); trainer.evaluate(tokens, tokens); trainer.close()"

# Declared after the warm-up: a RUN's writes below a VOLUME path are discarded.
VOLUME ["/data", "/inbox"]

# SIGTERM starts the graceful stop (finish the step, final checkpoint, close the database).
# Give it time: `docker stop -t 90`, or `stop_grace_period: 90s` in compose; SIGKILL follows.
STOPSIGNAL SIGTERM

# Healthy: the daemon holds /data/daemon.lock, health.json is fresh and its state is "ready".
# The start period covers a cold numba compile and opening a large corpus.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD ["crystalline", "status", "--health"]

ENTRYPOINT ["/usr/bin/tini", "--", "crystalline"]
CMD ["run"]
