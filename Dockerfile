# customer-ai worker image: `docker build -t customer-ai .`
# Runs as a non-root user; the entry point is the `customer-ai` CLI (default: `worker`).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# compilers only in this stage, for dependencies without a wheel for this platform
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN pip wheel --wheel-dir /wheels .

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
RUN pip install --no-index --find-links=/wheels customer-ai && rm -rf /wheels
WORKDIR /app
# the default config; mount another one and point CUSTOMER_AI_CONFIG at it to change goals
COPY --chown=app:app customer-ai.toml /app/customer-ai.toml
RUN chown app:app /app
USER app
EXPOSE 6066
ENTRYPOINT ["customer-ai"]
CMD ["worker"]
