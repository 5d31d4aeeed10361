"""Ghost BN and batch augmentation in a plain PyTorch loop, without dist_train's trainer:

python examples/plain_loop.py
"""

import torch
from torch import nn
from torchvision.transforms import v2

import dist_train


def main(steps: int = 20, batch: int = 32, copies: int = 4, ghost: int = 16) -> float:
    """Train a small CNN on random two-class images (the class is the sign of the mean); returns the last loss."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )
    dist_train.convert_to_ghost_bn(model, ghost_batch_size=ghost)  # each BatchNorm2d -> GhostBatchNorm2d
    augment = v2.Compose([v2.RandomCrop(16, padding=2), v2.RandomHorizontalFlip()])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(steps):
        labels = torch.randint(0, 2, (batch,))
        images = torch.randn(batch, 1, 16, 16) + (2 * labels - 1).view(-1, 1, 1, 1).float()
        views, view_labels = dist_train.batch_views(images, labels, augment, copies)  # (batch·copies, 1, 16, 16)
        loss = nn.functional.cross_entropy(model(views), view_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 5 == 0 or step == steps - 1:
            print(f"step {step}: {len(views)} views, loss {loss.item():.4f}")
    return loss.item()


if __name__ == "__main__":
    main()
