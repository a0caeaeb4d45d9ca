"""``kerasalex port-weights``: torchvision AlexNet checkpoint -> Keras weights."""

from __future__ import annotations

import click

from kerasalex.commands import user_errors

DEFAULT_OUTPUT = "saved_models/alexnet_imagenet.weights.h5"  # = kerasalex.porting.DEFAULT_OUTPUT


@click.command("port-weights")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option(
    "--output", "-o", default=DEFAULT_OUTPUT, show_default=True, type=click.Path(dir_okay=False),
    help="Where to write: *.weights.h5 (weights only) or *.keras (the full uint8-input ImageNet classifier).",
)
@click.option("--no-check", is_flag=True, help="Skip the comparison of the Keras logits with torch's.")
def port_weights(checkpoint, output, no_check):
    """Port torchvision's AlexNet weights (a .pth state_dict) to Keras.

    Reads CHECKPOINT with torch.load(weights_only=True) -- a checkpoint whose
    pickle would run code is refused -- maps every key to its Keras layer,
    compares both models' logits on a random 224x224 batch and writes the
    result atomically. Use it with `kerasalex train --arch alexnet-torch
    --weights OUTPUT`. Needs torch: pip install "kerasalex[torch]".

    \b
    Example:
      kerasalex port-weights alexnet-owt-7be5be79.pth -o saved_models/alexnet_imagenet.weights.h5
    """
    with user_errors():
        from kerasalex.porting import port_torchvision_alexnet

        figures = port_torchvision_alexnet(checkpoint, output, check=not no_check)
    click.echo(
        f"Ported {figures['source']} -> {figures['output']} "
        f"({figures['num_params']:,} parameters, {figures['num_classes']} classes)"
    )
    if figures["checked"]:
        click.echo(
            f"Check: max |keras - torch| logit difference {figures['max_abs_diff']:.3g} "
            f"(relative {figures['rel_diff']:.3g}; max |logit| {figures['max_abs_logit']:.3g}; "
            f"batch {figures['batch']} at {figures['image_size']}x{figures['image_size']}; "
            f"top-1 {'agrees' if figures['top1_agree'] else 'DIFFERS'})"
        )
    else:
        click.echo("Check skipped (--no-check).")
