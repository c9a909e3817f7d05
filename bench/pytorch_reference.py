"""Examples/s of one training step of a PyTorch Probabilistic U-Net with the layer structure of
the popular PyTorch port (stefanknegt/Probabilistic-Unet-Pytorch: 3x3 conv blocks of 3 convs,
average pooling, bilinear upsampling with align_corners, 4 f_comb 1x1 convs, L2 1e-5 on prior,
posterior and f_comb), on the same input as bench/train_step.py. Written for this benchmark, not
copied from the port. Prints JSON.

Needs PyTorch (not a project dependency): `pip install torch==2.13.0` (CPU build).

    python bench/pytorch_reference.py [--steps 8] [--repeats 5] [--size 128] [--batch 8]
        [--profile]   # instead: where a step's time goes (torch.profiler), by phase and op class
"""

import argparse
import json
import re
import resource

import numpy as np
from timing import add_step_arguments, run_times

try:
    import torch
    from torch import nn
    import torch.nn.functional as F
except ImportError as error:  # pragma: no cover - optional benchmark
    raise SystemExit("bench/pytorch_reference.py needs PyTorch: pip install torch==2.13.0") \
        from error


def conv_block(in_channels, out_channels, convs, pool):
    layers = [nn.AvgPool2d(2, 2, ceil_mode=True)] if pool else []
    for i in range(convs):
        layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    def __init__(self, in_channels, filters, convs=3):
        super().__init__()
        self.blocks = nn.ModuleList(
            conv_block(in_channels if i == 0 else filters[i - 1], f, convs, pool=i > 0)
            for i, f in enumerate(filters))

    def forward(self, x):
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs


class UNet(nn.Module):
    def __init__(self, in_channels, filters, convs=3):
        super().__init__()
        self.encoder = Encoder(in_channels, filters, convs)
        self.up = nn.ModuleList(
            conv_block(filters[i + 1] + filters[i], filters[i], convs, pool=False)
            for i in range(len(filters) - 2, -1, -1))

    def forward(self, x):
        skips = self.encoder(x)
        x = skips[-1]
        for skip, block in zip(reversed(skips[:-1]), self.up):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            x = block(torch.cat([x, skip], 1))
        return x


class Gaussian(nn.Module):
    def __init__(self, in_channels, filters, latent_dim):
        super().__init__()
        self.encoder = Encoder(in_channels, filters)
        self.head = nn.Conv2d(filters[-1], 2 * latent_dim, 1)
        self.latent_dim = latent_dim

    def forward(self, x):
        encoding = self.encoder(x)[-1].mean(dim=(2, 3), keepdim=True)
        mu_log_sigma = self.head(encoding)[:, :, 0, 0]
        mu, log_sigma = mu_log_sigma.split(self.latent_dim, 1)
        return torch.distributions.Independent(
            torch.distributions.Normal(mu, torch.exp(log_sigma)), 1)


class ProbUNet(nn.Module):
    def __init__(self, filters=(32, 64, 128, 192), latent_dim=6, fcomb_convs=4, beta=1.0):
        super().__init__()
        self.unet = UNet(1, filters)
        self.prior = Gaussian(1, filters, latent_dim)
        self.posterior = Gaussian(2, filters, latent_dim)
        layers = [nn.Conv2d(filters[0] + latent_dim, filters[0], 1), nn.ReLU(inplace=True)]
        for _ in range(fcomb_convs - 2):
            layers += [nn.Conv2d(filters[0], filters[0], 1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(filters[0], 1, 1))
        self.fcomb = nn.Sequential(*layers)
        self.beta = beta

    def loss(self, image, mask):
        features = self.unet(image)
        prior = self.prior(image)
        posterior = self.posterior(torch.cat([image, mask], 1))
        z = posterior.rsample()
        tiled = z[:, :, None, None].expand(-1, -1, *features.shape[2:])
        logits = self.fcomb(torch.cat([features, tiled], 1))
        reconstruction = F.binary_cross_entropy_with_logits(logits, mask, reduction="sum")
        kl = torch.distributions.kl_divergence(posterior, prior).sum()
        batch = image.shape[0]
        l2 = sum(p.pow(2).sum() for m in (self.prior, self.posterior, self.fcomb)
                 for p in m.parameters())
        return (reconstruction + self.beta * kl) / batch + 1e-5 * l2


# Op classes of `--profile`, by the first pattern in an op's name (self times; oneDNN's layout
# reorders happen inside the convolutions: bench/onednn_profile.py separates them). The
# optimizer's ops are element-wise: its phase's wall time says what it costs.
OP_CLASSES = (("convolution backward (input and filter gradients)", "convolution_backward"),
              ("convolution forward", "convolution"))


def profile(step, steps):
    """Where `steps` calls of `step` spend their time: the wall time of its phases (the
    `record_function` ranges) and the ops' self time by `OP_CLASSES`, in ms per step."""
    from torch.profiler import ProfilerActivity

    with torch.profiler.profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    phases, classes = {}, {}
    for event in prof.key_averages():
        if event.key in ("loss", "backward", "optimizer"):
            phases[event.key] = round(event.cpu_time_total / 1e3 / steps, 1)
        name = next((c for c, pattern in OP_CLASSES if re.search(pattern, event.key)),
                    "element-wise, reductions, distributions, loss and optimizer")
        classes[name] = classes.get(name, 0.0) + event.self_cpu_time_total / 1e3 / steps
    return {"wall_ms_per_step_by_phase": phases,
            "self_ms_per_step_by_class": {k: round(v, 1) for k, v in sorted(
                classes.items(), key=lambda kv: -kv[1])}}


def main():
    parser = argparse.ArgumentParser()
    add_step_arguments(parser)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((args.batch, 1, args.size, args.size), np.float32))
    masks = torch.from_numpy(
        rng.integers(0, 2, (args.batch, 1, args.size, args.size)).astype(np.float32))
    model = ProbUNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad()
        with torch.profiler.record_function("loss"):
            loss = model.loss(images, masks)
        with torch.profiler.record_function("backward"):
            loss.backward()
        with torch.profiler.record_function("optimizer"):
            optimizer.step()

    step()
    if args.profile:
        print(json.dumps({"framework": f"torch {torch.__version__}",
                          "capability": torch.backends.cpu.get_cpu_capability(),
                          **profile(step, args.steps)}, indent=2))
        return
    times = run_times(lambda: [step() for _ in range(args.steps)], args.repeats, warmup=False)
    rates = [args.batch * args.steps / t for t in times]
    print(json.dumps({
        "framework": f"torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "config": {"image": [args.size, args.size, 1], "batch": args.batch},
        "examples_per_s_median": float(np.median(rates)),
        "examples_per_s_runs": [round(r, 2) for r in rates],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }, indent=2))


if __name__ == "__main__":
    main()
