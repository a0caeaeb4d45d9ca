"""tf.distribute strategies for ``--distribute none|mirrored|multi-worker``.

The batch size is *global*: with N replicas each replica sees batch_size / N
images per step. ``multi-worker`` reads the cluster from ``TF_CONFIG``; only
the chief (worker 0) writes run files and models; other workers write into a
scratch folder that is deleted at the end.
"""

from __future__ import annotations

import json
import os


def tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise ValueError(f"TF_CONFIG is not valid JSON: {raw[:80]!r}") from None


def is_chief() -> bool:
    """True on the process that owns the outputs (always, without TF_CONFIG)."""
    cfg = tf_config()
    task = cfg.get("task") or {}
    ttype, index = task.get("type"), int(task.get("index", 0) or 0)
    if not ttype:
        return True
    if ttype == "chief":
        return True
    has_chief = "chief" in (cfg.get("cluster") or {})
    return ttype == "worker" and index == 0 and not has_chief


def make_strategy(mode: str):
    """Returns the tf.distribute strategy for ``mode`` (``none`` -> the default strategy)."""
    import tensorflow as tf

    if mode == "none":
        return tf.distribute.get_strategy()
    if mode == "mirrored":
        return tf.distribute.MirroredStrategy()
    if mode == "multi-worker":
        if not tf_config():
            raise ValueError("--distribute multi-worker needs the TF_CONFIG environment variable (cluster and task)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"distribute must be one of none, mirrored, multi-worker. Received: distribute={mode!r}")
