"""The `tfprobunet` console script. Thin: every command calls a library function."""

import argparse
import json
import os
import sys


def _int_list(text):
    return [int(v) for v in text.split(",") if v]


def _add_train_arguments(parser):
    parser.add_argument("--dataset", choices=("flips", "graders"), default="flips")
    parser.add_argument("--workdir", required=True, help="checkpoints, log.csv, model.keras")
    parser.add_argument("--strategy", choices=("default", "mirrored"), default="default")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch size")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-examples", type=int, default=1000)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-channels", type=_int_list, default=[32, 64, 128, 192],
                        help="U-Net filters per level, comma-separated")
    parser.add_argument("--convs-per-block", type=int, default=3)
    parser.add_argument("--latent-dim", type=int, default=6)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--reconstruction", choices=("sum", "mean"), default="sum")
    parser.add_argument("--kl", choices=("analytic", "sampled"), default="analytic")
    parser.add_argument("--jit-compile", action="store_true")


def _train(args):
    from tfprobunet import training

    training.train(
        args.workdir, dataset=args.dataset, epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
        image_size=args.image_size, num_examples=args.num_examples,
        learning_rate=args.learning_rate, strategy=args.strategy, seed=args.seed,
        jit_compile=args.jit_compile, num_channels=args.num_channels,
        convs_per_block=args.convs_per_block, latent_dim=args.latent_dim, beta=args.beta,
        reconstruction=args.reconstruction, kl=args.kl)
    print(f"model saved to {os.path.join(args.workdir, 'model.keras')}")


def _demo(args):
    from tfprobunet import demo

    print(json.dumps(demo.run(args.workdir, minutes=args.minutes), indent=2))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tfprobunet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train on a built-in benchmark (resumes)")
    _add_train_arguments(train)
    train.set_defaults(run=_train)
    demo = commands.add_parser("demo", help="train a small model on flips and sample from it")
    demo.add_argument("--workdir", default="runs/demo")
    demo.add_argument("--minutes", type=float, default=3.0, help="training time budget")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
