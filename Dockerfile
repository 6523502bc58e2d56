# syntax=docker/dockerfile:1
# tuneserve's service image. CPU by default:
#   docker build -t tuneserve .
# GPU (onnxruntime-gpu on a CUDA runtime; serves configs/serving-gpu.toml):
#   docker build --target gpu -t tuneserve:gpu .
# Both bundle the exported models named by the serving config: run `make demo` first (or point
# the config at your own exports). Run: docker run -p 3000:3000 tuneserve

# ---- gpu: CUDA runtime + cuDNN, Python 3.11, onnxruntime-gpu ---------------------------------
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 AS gpu
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /srv/tuneserve
COPY requirements/serve.txt requirements/serve.txt
RUN pip install -r requirements/serve.txt \
    && pip uninstall -y onnxruntime \
    && pip install "onnxruntime-gpu>=1.32,<1.33"
COPY tuneserve/ tuneserve/
COPY service/ service/
COPY configs/serving.toml configs/serving-gpu.toml configs/
COPY artifacts/export/ artifacts/export/
ENV TUNESERVE_SERVING_CONFIG=configs/serving-gpu.toml BENTOML_HOME=/srv/bentoml \
    BENTOML_DO_NOT_TRACK=true
EXPOSE 3000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/readyz')"
CMD ["bentoml", "serve", "service.app:Tuneserve", "--host", "0.0.0.0", "--port", "3000"]

# ---- cpu (default, the last stage): slim Python 3.11, onnxruntime ------------------------------
FROM python:3.11-slim AS cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /srv/tuneserve
COPY requirements/serve.txt requirements/serve.txt
RUN pip install -r requirements/serve.txt
COPY tuneserve/ tuneserve/
COPY service/ service/
COPY configs/serving.toml configs/serving-gpu.toml configs/
COPY artifacts/export/ artifacts/export/
RUN useradd --create-home --uid 10001 tuneserve && chown -R tuneserve /srv/tuneserve
USER tuneserve
ENV TUNESERVE_SERVING_CONFIG=configs/serving.toml BENTOML_HOME=/srv/tuneserve/.bentoml \
    BENTOML_DO_NOT_TRACK=true
EXPOSE 3000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/readyz')"
CMD ["bentoml", "serve", "service.app:Tuneserve", "--host", "0.0.0.0", "--port", "3000"]
