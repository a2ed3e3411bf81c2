# affectstream app image: one image for every role (caption / classify workers, monitor, trainer).
#
#   docker build -t affectstream:latest .                                   # CPU torch (default)
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t affectstream:cuda .
#
# The CUDA variant installs the same torch==2.13.0 from PyTorch's CUDA wheel index; run it with the
# NVIDIA container toolkit. docker-compose.yml builds it as affectstream:cuda for its gpu and train-gpu profiles
# only (caption-gpu, trainer-gpu reserve one GPU each); the default services run this CPU image anywhere.
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false HF_HOME=/cache/huggingface

# libgl1/libglib2.0-0: OpenCV (RapidOCR in the offline describer)
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# torch first, from the chosen index, so the resolver never pulls the multi-GB default CUDA build
RUN pip install --index-url "$TORCH_INDEX" torch==2.13.0
COPY pyproject.toml README.md ./
COPY affectstream ./affectstream
COPY model ./model
COPY training ./training
COPY streaming ./streaming
COPY bench ./bench
RUN pip install --extra-index-url "$TORCH_INDEX" . && useradd --create-home --uid 10001 app \
 && mkdir -p /models /cache && chown app /models /cache

USER app
EXPOSE 6066
# every setting comes from AFFECTSTREAM_* variables (see docker-compose.yml)
ENTRYPOINT ["affectstream"]
CMD ["worker", "--role", "all"]
