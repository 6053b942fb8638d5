"""Small spiking networks and learnable data for the tests (also ``file.py:Name`` specs)."""

from __future__ import annotations

import snntorch as snn
import torch
from snntorch import surrogate
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sconce


def blobs(samples: int, seed: int, classes: int = 4, size: int = 8) -> TensorDataset:
    """The class is the quadrant holding a bright blob; values in [0, 1] plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(samples) % classes
    images = 0.1 * torch.rand(samples, 1, size, size, generator=generator)
    half = size // 2
    for index, label in enumerate(labels.tolist()):
        row, col = divmod(label % 4, 2)
        images[index, 0, row * half:(row + 1) * half, col * half:(col + 1) * half] += 0.8
    return TensorDataset(images, labels)


def tiny_data(batch_size: int = 32) -> sconce.Data:
    """Learnable 1x8x8 data with 4 classes (``--data tests/snn_helpers.py:tiny_data``)."""
    return sconce.Data(train=DataLoader(blobs(256, 0), batch_size=batch_size, shuffle=True),
                       val=DataLoader(blobs(64, 1), batch_size=batch_size),
                       test=DataLoader(blobs(128, 2), batch_size=batch_size),
                       name="blobs", num_classes=4, input_shape=(1, 8, 8))


class Net(nn.Module):
    """A step-wise conv SNN for 1x8x8 inputs (``--model tests/snn_helpers.py:Net``), run for
    10 time steps (the adapter option it carries)."""

    def __init__(self, num_classes: int = 4, in_channels: int = 1, image_size: int = 8) -> None:
        super().__init__()
        self.sconce_snn = {"num_steps": 10}
        grad = surrogate.fast_sigmoid(slope=25)
        self.conv = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.lif1 = snn.Leaky(beta=torch.full((6, 1, 1), 0.6), learn_beta=True,
                              threshold=torch.full((6, 1, 1), 1.0), learn_threshold=True,
                              spike_grad=grad, init_hidden=True)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(6 * (image_size // 2) ** 2, num_classes)
        self.lif2 = snn.Leaky(beta=0.6, spike_grad=grad, init_hidden=True, output=True)

    def forward(self, x: torch.Tensor):
        return self.lif2(self.fc(self.flatten(self.lif1(self.pool(self.conv(x))))))


class LoopNet(nn.Module):
    """The snnTorch-tutorial style with explicit states: the model runs its own time loop."""

    def __init__(self, num_steps: int = 6) -> None:
        super().__init__()
        self.num_steps = num_steps
        self.fc1 = nn.Linear(64, 16)
        self.lif1 = snn.Leaky(beta=0.8)
        self.fc2 = nn.Linear(16, 4)
        self.lif2 = snn.Leaky(beta=0.8)

    def forward(self, x: torch.Tensor):
        mem1, mem2 = self.lif1.reset_mem(), self.lif2.reset_mem()
        spikes, membranes = [], []
        for _ in range(self.num_steps):
            spk1, mem1 = self.lif1(self.fc1(x.flatten(1)), mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            spikes.append(spk2)
            membranes.append(mem2)
        return torch.stack(spikes), torch.stack(membranes)


def relu_cnn(num_classes: int = 4) -> nn.Module:
    """A ReLU CNN with batch norm and max-pooling, for conversion."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(16 * 16, 32), nn.ReLU(), nn.Linear(32, num_classes))
