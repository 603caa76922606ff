# customer-ai worker image: `docker build -t customer-ai .`
# Runs as a non-root user; the entry point is the `customer-ai` CLI (default: `worker`).

FROM python:3.11-slim AS build
# CUSTOMER_AI_REQUIRE_NATIVE=1: the image ships the compiled scoring core; a failed mypyc
# build or C compile fails the build (setup.py) instead of shipping the Python sources
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 CUSTOMER_AI_REQUIRE_NATIVE=1
# compilers only in this stage, for the core and dependencies without a wheel here
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# every package at the version requirements.lock pins (those CI passed with), the build
# of the core (mypy, setuptools) included
RUN pip install -c requirements.lock pip \
    && pip wheel -c requirements.lock --build-constraint requirements.lock --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CUSTOMER_AI_CONFIG=/app/customer-ai.toml \
    CUSTOMER_AI_WEB_HOST=0.0.0.0 \
    CUSTOMER_AI_WEB_PORT=6066
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app
COPY --from=build /wheels /wheels
COPY requirements.lock /tmp/requirements.lock
RUN pip install --no-index --find-links=/wheels -c /tmp/requirements.lock customer-ai \
    && rm -rf /wheels /tmp/requirements.lock \
    && python -c "import models, sys; sys.exit(0 if models.NATIVE else 'the scoring core is not compiled')"
WORKDIR /app
# the default config; mount another one and point CUSTOMER_AI_CONFIG at it to change goals
COPY --chown=app:app customer-ai.toml /app/customer-ai.toml
RUN chown app:app /app
USER app
EXPOSE 6066
ENTRYPOINT ["customer-ai"]
CMD ["worker"]
