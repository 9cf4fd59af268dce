"""Train a small MLP on MNIST; swap Adam for a learned optimizer by changing one line.

python examples/quickstart_mnist.py --optimizer rnnprop --steps 300
python examples/quickstart_mnist.py --weights hamiltonian-general   # pretrained weights
"""

import argparse

import torch
from torch import nn

import learned_optim as lo
from learned_optim.meta.tasks.data import load_images

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--optimizer", choices=["adam", *lo.ARCHITECTURES], default="rnnprop")
parser.add_argument("--weights", help="pretrained weights name, directory or Hub repo id (default: fresh network)")
parser.add_argument("--steps", type=int, default=300)
parser.add_argument("--data-root", help="dataset folder (default: $LEARNED_OPTIM_DATA or ~/.cache)")
args = parser.parse_args()

torch.manual_seed(0)
images, labels = load_images("MNIST", train=True, root=args.data_root)
model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))

if args.weights:
    opt = lo.load(args.weights, model.parameters())
elif args.optimizer == "adam":
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # the line a user replaces ...
else:  # ... with a learned one, e.g. lo.RNNprop(model.parameters()) (fresh, untrained weights)
    opt = lo.ARCHITECTURES[args.optimizer](model.parameters())

for step in range(1, args.steps + 1):
    batch = torch.randint(0, len(images), (128,))
    loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 50 == 0 or step == args.steps:
        print(f"step {step:5d}  loss {loss.item():.4f}")
