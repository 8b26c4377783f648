# syntax=docker/dockerfile:1
# The streamsight image: one image for every streamsight process of docker-compose.yml
# (`topics apply` + `db migrate` in the init job, `worker`, `lag-exporter`).
#
#   docker build -t streamsight:local .
#   docker run --rm streamsight:local --help
#
# Two stages: the first builds streamsight's wheel and installs it, without dev extras and
# not editable, into a virtualenv; the second copies only that virtualenv, so the runtime
# image carries neither pip caches nor the source tree.

# One base for both stages: the virtualenv's python is a symlink to the base's interpreter.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/venv
# What the wheel is built from; README.md too, as pyproject.toml names it as the readme.
COPY pyproject.toml README.md ./
COPY streams/ streams/
COPY agents/ agents/
# The slim image has no compiler: every dependency installs from a wheel (checked for
# linux x86_64 with --only-binary=:all:).
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --prefer-binary /wheels/streamsight-*.whl


FROM ${PYTHON_IMAGE} AS runtime
# LOG_FORMAT=json: one JSON object per line for the log collector (no terminal here).
# TOPICS_FILE: absolute, so `topics apply` finds it whatever the working directory.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOG_FORMAT=json \
    TOPICS_FILE=/app/topics.yaml

# A fixed, unprivileged uid; no login shell, no home besides /app.
RUN groupadd --system --gid 10001 streamsight \
 && useradd --system --uid 10001 --gid streamsight --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin streamsight

COPY --from=build /opt/venv /opt/venv

# /app is the working directory and belongs to the user, because Faust keeps its data
# directory (`<APP_ID>-data/`) in the working directory. The files copied in stay owned by
# root: the process can read them, not change them.
WORKDIR /app
RUN chown streamsight:streamsight /app
COPY topics.yaml ./
COPY sql/ sql/

# streams/adapters/db.py looks for the migrations in sql/ beside the package
# (SQL_DIR = <package's parent>/sql, i.e. site-packages/sql once installed), so that
# path is a link to /app/sql; then the build fails here, not at start-up, if the
# migrations cannot be found.
RUN sql_dir="$(python -c 'from streams.adapters.db import SQL_DIR; print(SQL_DIR)')" \
 && ln -s /app/sql "$sql_dir" \
 && python -c 'from streams.adapters.db import SQL_DIR, discover; assert discover(SQL_DIR)' \
 && streamsight --help >/dev/null

USER streamsight:streamsight

# 6066: the worker's web server (WEB_PORT: /metrics, /health/*); 9308: lag-exporter.
EXPOSE 6066 9308

# Exec form, no shell in between: SIGTERM reaches streamsight itself (directly, or through
# the tiny init of compose's `init: true`), and the worker seals its open batches first.
ENTRYPOINT ["streamsight"]
CMD ["worker"]
