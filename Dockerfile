# A GPU worker image for the ET study harness. PyPI's Linux torch wheels bundle CUDA; run with the
# NVIDIA container toolkit (`docker run --gpus all ...`). Join a Ray cluster with ray.address=auto
# (or RAY_ADDRESS) and point mlflow.tracking_uri at a shared tracking server.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true

RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/et-harness
COPY pyproject.toml README.md ./
COPY harness harness
COPY trainables trainables
COPY reports reports
COPY search_spaces search_spaces
RUN pip install "torch>=2.4" . && python -m harness.sweep --help > /dev/null

ENTRYPOINT ["python", "-m", "harness.sweep"]
CMD ["birds_video"]
