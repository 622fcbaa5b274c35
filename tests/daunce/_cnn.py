"""A small CNN with BatchNorm and dropout on 1x8x8 images with a planted class signal (tests of the
copies' independence and of the default targets)."""

import torch
from torch import nn


def small_cnn(num_classes: int = 3, seed: int = 0, conv_bias: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=conv_bias),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


def planted_images(n: int, num_classes: int = 3, seed: int = 0, channels: int = 1, size: int = 8):
    """(x [n, channels, size, size], y [n]): noise plus a class-specific bright patch."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = 0.5 * torch.randn(n, channels, size, size, generator=g)
    for c in range(num_classes):
        r = (2 * c) % (size - 2)
        x[y == c, :, r : r + 2, r : r + 2] += 2.0
    return x, y


def trained_cnn(n: int = 96, seed: int = 0, steps: int = 60, conv_bias: bool = True):
    """(θ0, train set, test set): the CNN trained in train mode, so its BatchNorm running statistics
    are far from their initial (0, 1)."""
    model = small_cnn(seed=seed, conv_bias=conv_bias)
    x, y = planted_images(n + 24, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:n]), y[:n]).backward()
        opt.step()
    model.eval()
    train = torch.utils.data.TensorDataset(x[:n], y[:n])
    test = torch.utils.data.TensorDataset(x[n:], y[n:])
    return model, train, test
