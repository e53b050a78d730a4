# syntax=docker/dockerfile:1
# The crm-worker image: the installed package, the sample rules, templates and demo CRM data, a
# non-root user, `crm-worker` as the entry point. docker-compose.yml builds it once and runs the
# scheduler, the workers and the intake from it (README "Deployment").
#
#   docker build -t crm-worker .
#   docker run --rm crm-worker check

# ---- build: a virtualenv with the package and its dependencies (all wheels; no compiler)
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/crm-worker
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
# The project itself, from this folder (its dependencies' lower bounds are in pyproject.toml).
RUN /opt/crm-worker/bin/pip install . && /opt/crm-worker/bin/crm-worker --help > /dev/null

# ---- runtime: the virtualenv and the sample data, nothing else of the checkout
FROM python:3.11.11-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="crm-worker" \
      org.opencontainers.image.description="CRM messaging automation worker: rules, scheduler, Dramatiq workers, templates, SMTP"
RUN groupadd --system --gid 10001 crm \
    && useradd --system --uid 10001 --gid crm --home-dir /app --shell /usr/sbin/nologin crm
COPY --from=build /opt/crm-worker /opt/crm-worker
WORKDIR /app
# Owned by root, readable by all: the service never writes its rules or templates (compose
# mounts the checkout's folders over these so a sales manager's edit is live).
COPY rules ./rules
COPY templates ./templates
COPY examples/crm ./examples/crm
RUN mkdir -p /app/var && chown crm:crm /app/var
ENV PATH="/opt/crm-worker/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    CRM_RULES_DIR=/app/rules \
    CRM_TEMPLATES_DIR=/app/templates \
    CRM_SOURCE=/app/examples/crm \
    CRM_DATA_DIR=/app/var
# Numeric, so Kubernetes' runAsNonRoot can check it.
USER 10001:10001
# SIGTERM (docker stop) drains the worker processes; give them CRM_STOP_TIMEOUT_S (30 s) plus
# a margin with `docker stop -t 40` or compose's stop_grace_period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["crm-worker"]
CMD ["run"]
