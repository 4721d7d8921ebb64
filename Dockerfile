# msdn-tune on the official Ray image, for tune/cluster/rayjob.yaml (KubeRay) or any Ray-on-containers
# cluster: the Ray the cluster definitions pin (2.60.0), Python 3.11, the GPU (CUDA) variant.
#
#   docker build -t REGISTRY/msdn-tune:0.1.0 .
#   docker run --rm REGISTRY/msdn-tune:0.1.0 python tune/run.py --help
#   docker push REGISTRY/msdn-tune:0.1.0        # then set this image in tune/cluster/rayjob.yaml
#
# The repository goes to /home/ray/msdn-tune, the RayJob's working_dir, and the project is installed
# into the image's own Python (no venv): the `python` every Ray process and job entrypoint finds.
# .dockerignore keeps data, results, venvs and MLflow files out of the image.
ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py311-gpu
ARG RAY_VERSION

# The base image runs as user `ray`; a folder made by WORKDIR alone would belong to root.
RUN mkdir -p /home/ray/msdn-tune
WORKDIR /home/ray/msdn-tune

# Dependencies in a layer of their own (torch alone is gigabytes), rebuilt only when pyproject.toml
# changes: an editable install of a placeholder package, replaced by the code below. The constraint
# keeps the image's Ray as it is, whatever pyproject.toml's range would allow.
COPY --chown=ray:users pyproject.toml README.md ./
RUN mkdir -p msdn && touch msdn/__init__.py \
    && echo "ray==${RAY_VERSION}" > /tmp/ray-constraint.txt \
    && pip install --no-cache-dir -c /tmp/ray-constraint.txt -e . \
    && rm -rf msdn

# The code. Installing it again (no dependencies) points the editable install at it; --help proves the
# RayJob's entrypoint starts with the image's Python.
COPY --chown=ray:users . .
RUN pip install --no-cache-dir --no-deps -e . \
    && python tune/run.py --help > /dev/null
