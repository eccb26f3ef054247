# Kairos server image: gRPC (Open Inference Protocol) on 8001, Prometheus /metrics on 8002.
# Mount a model repository at /models and pass `--model-repository /models`; with no
# repository the server serves its built-in demo models.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
# Dependencies first (pyproject.toml/setup.py change less often than the code), so a
# code change reuses the cached dependency layer.
COPY pyproject.toml setup.py README.md ./
COPY protos ./protos
COPY server ./server
COPY client ./client
COPY optimize ./optimize
RUN pip install .

RUN useradd --create-home --uid 10001 kairos
USER kairos
WORKDIR /home/kairos

EXPOSE 8001 8002
ENTRYPOINT ["python", "-m", "kairos.server", "--host", "0.0.0.0", "--grpc-port", "8001", "--metrics-port", "8002"]
