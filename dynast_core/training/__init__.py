"""Training: losses, datasets and trainers (see the training issue).

* :mod:`.losses`: the DynaST objective (official weights; supervised and unsupervised style-transfer modes),
  the StyA2K objective, and :class:`VGG19Features` / :func:`load_vgg19` (``vgg19_conv.pth`` or
  ``vgg_normalised.pth``).
* :mod:`.discriminator`: the official multi-scale patch discriminator.
* :mod:`.data`: DeepFashion (official layout), self-supervised image folders, content/style folders.
* :mod:`.trainer`: :class:`DynaSTTrainer`, :class:`StyA2KTrainer` (single process or ``torchrun``).
* :mod:`.cli`: ``train dynast`` / ``train stya2k`` (:func:`add_train_command`).
"""
from .data import (ContentStyleDataset, DataError, DeepFashionDataset, ImageFolderLayoutDataset,  # noqa: F401
                   ResumableSampler, is_deepfashion_root)
from .discriminator import MultiscaleDiscriminator, NLayerDiscriminator, init_weights  # noqa: F401
from .losses import (DynaSTCriterion, DynaSTLossWeights, StyA2KCriterion, StyA2KLossWeights,  # noqa: F401
                     VGG19Features, contextual_loss, load_vgg19)
from .trainer import DynaSTTrainer, StyA2KTrainer, TrainOptions, latest_checkpoint, weights_checksum  # noqa: F401
from .cli import add_train_command  # noqa: F401

__all__ = ["ContentStyleDataset", "DataError", "DeepFashionDataset", "ImageFolderLayoutDataset", "ResumableSampler",
           "is_deepfashion_root", "MultiscaleDiscriminator", "NLayerDiscriminator", "init_weights",
           "DynaSTCriterion", "DynaSTLossWeights", "StyA2KCriterion", "StyA2KLossWeights", "VGG19Features",
           "contextual_loss", "load_vgg19", "DynaSTTrainer", "StyA2KTrainer", "TrainOptions", "latest_checkpoint",
           "weights_checksum", "add_train_command"]
