# kerasalex on the official TensorFlow GPU image.
#
#   docker build -t kerasalex .
#   docker run --gpus all --rm -it \
#     -v "$PWD/data:/data" -v kerasalex-keras:/home/kerasalex/.keras \
#     -v "$PWD/saved_models:/work/saved_models" -v "$PWD/runs:/work/runs" \
#     kerasalex train --arch alexnet
#
# The image's own TensorFlow and Keras are used as they are: the build stops
# if they are not the versions pyproject.toml pins; kerasalex goes in with
# --no-deps, and its other dependencies under a constraints file that pins
# every package the image already has, so pip may add packages but can never
# replace TensorFlow, Keras, NumPy or anything else the image ships.
FROM tensorflow/tensorflow:2.21.0-gpu

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    KERAS_BACKEND=tensorflow \
    MPLBACKEND=Agg \
    KERASALEX_SHOW_DEVICE=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN python -c "import tensorflow as tf, keras; print('image: TensorFlow', tf.__version__, 'Keras', keras.__version__); ok = tf.__version__.startswith('2.21.') and keras.__version__.startswith('3.15.'); raise SystemExit(0 if ok else 'kerasalex pins tensorflow 2.21 and keras 3.15; pick the matching tensorflow/tensorflow:<version>-gpu tag')"

# What kerasalex needs beyond TensorFlow/Keras (versions as tested).
RUN pip list --format=freeze > /tmp/image-packages.txt \
 && pip install --no-cache-dir -c /tmp/image-packages.txt \
      "keras-tuner==1.4.8" "kt-legacy==1.0.5" "scikit-learn==1.9.1" "matplotlib==3.11.2" \
      "click==8.5.1" "pillow==13.0.0" \
 && rm /tmp/image-packages.txt

WORKDIR /src
COPY pyproject.toml README.md ./
COPY kerasalex ./kerasalex
RUN pip install --no-cache-dir --no-deps . \
 && python -c "import importlib.metadata as md, tensorflow as tf, keras; print('kerasalex', md.version('kerasalex'), 'on TensorFlow', tf.__version__, 'Keras', keras.__version__)"

# A non-root user, uid/gid 1000 (the usual first host user, so bind-mounted
# folders are writable; else run with --user "$(id -u):$(id -g)"). Bases
# that already have a uid-1000 user (Ubuntu 24.04's "ubuntu") get it renamed.
RUN if id -u 1000 >/dev/null 2>&1; then \
      groupmod -n kerasalex "$(id -gn 1000)" && usermod -l kerasalex -d /home/kerasalex -m "$(id -un 1000)"; \
    else \
      groupadd --gid 1000 kerasalex && useradd --create-home --uid 1000 --gid 1000 --shell /bin/bash kerasalex; \
    fi \
 && mkdir -p /work/runs /work/saved_models /data /home/kerasalex/.keras /home/kerasalex/.cache/kerasalex \
 && chown -R 1000:1000 /work /data /home/kerasalex
ENV HOME=/home/kerasalex
USER 1000:1000
WORKDIR /work

# data (CIFAR archives, image folders), ~/.keras (Keras's dataset and
# weights cache), ~/.cache/kerasalex (decoded image folders), the outputs.
VOLUME ["/data", "/home/kerasalex/.keras", "/home/kerasalex/.cache/kerasalex", "/work/saved_models", "/work/runs"]

ENTRYPOINT ["kerasalex"]
CMD ["--help"]
