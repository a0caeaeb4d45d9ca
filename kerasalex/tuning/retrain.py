"""The best trial retrained on train+validation, as ``train --hparams`` would."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kerasalex.config import TrainConfig, resolve_config
from kerasalex.tuning._common import say

if TYPE_CHECKING:
    from kerasalex.tuning.settings import TuneConfig


def retrain(config: TuneConfig, hparams: dict[str, Any], project_dir: Path, options: dict[str, Any] | None = None) -> Path:
    """Trains the best hyperparameters on train+validation, as
    ``kerasalex train --hparams best_hparams.json`` with ``options`` (see
    :func:`retrain_options`) on the command line does, into
    ``<project>/retrain/``; an unfinished retrain is resumed, a finished one
    with the same options reused."""
    from kerasalex.callbacks import TrainingInterrupted
    from kerasalex.training import read_run_config, train

    hp = dict(hparams)
    arch = hp.pop("arch")
    output = Path(config.output) if config.output else Path("saved_models") / f"tune-{config.project_name}.keras"
    run_dir = Path(project_dir) / "retrain"
    train_config = resolve_config(arch=arch, recipe=hp.pop("recipe", "default"), hparams=hp, run_dir=str(run_dir),
                                  output=str(output), **(options or {}))
    resume = False
    if (run_dir / "config.json").exists():
        try:
            saved = read_run_config(run_dir)["config"]
        except (ValueError, KeyError):
            saved = None
        same = saved is not None and TrainConfig.from_dict({**saved, "run_dir": None, "output": None}) == train_config.replace(run_dir=None, output=None)
        if same and (run_dir / "summary.json").exists() and output.exists():
            say(f"best model already retrained: {output}")
            return output
        if same and (run_dir / "resume" / "state.json").exists():
            resume = True
        else:
            shutil.rmtree(run_dir)
    say(f"retraining the best trial on train+validation for {train_config.epochs} epoch(s) into {run_dir}")
    try:
        result = train(train_config, resume=resume)
    except TrainingInterrupted as exc:
        raise TrainingInterrupted(f"{str(exc).split(';')[0]} while retraining the best model") from None
    return Path(result.model_path)
