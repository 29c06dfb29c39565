# One image for the web service, the Celery worker and Flower.

# --- build: resolve and install into a virtual environment ---------------------------
FROM python:3.11-slim AS build
RUN pip install --no-cache-dir uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /app
# Dependencies first: this layer is reused until pyproject.toml or uv.lock change.
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-dev --extra server --extra flower --no-install-project
COPY README.md ./
COPY service ./service
COPY workers ./workers
RUN uv sync --locked --no-dev --extra server --extra flower --no-editable

# --- run: the environment only, as a user without privileges -------------------------
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 taskcast
COPY --from=build --chown=taskcast:taskcast /app/.venv /app/.venv
ENV PATH="/app/.venv/bin:$PATH" PYTHONUNBUFFERED=1
WORKDIR /home/taskcast
USER taskcast
EXPOSE 8000
CMD ["taskcast", "serve", "--host", "0.0.0.0", "--port", "8000"]
