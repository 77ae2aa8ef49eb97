"""Datasets and transforms: built-in data as Hugging Face ``datasets`` objects, plus folders."""
from .builtin import (
                      BUILTIN_DATASETS,
                      FASHION_MNIST_CLASSES,
                      class_names,
                      load_digits,
                      load_fashion_mnist,
                      load_fashion_mnist_lt,
                      load_image_dataset,
                      load_split,
                      read_idx,
                      write_idx,
)
from .episodes import (
    EpisodeCollator,
    EpisodeImages,
    EpisodeItem,
    EpisodeSampler,
    episode_loader,
    plain_episode_transform,
    simclr_transform,
)
from .segmentation import CompositeSegmentation, FashionMNISTComposites
from .segmentation_folders import FSS1000, Coco20i, Pascal5i
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TransformedImageDataset,
    UnreadableImageError,
    build_transform,
    collate_images,
    read_image,
)

__all__ = ["BUILTIN_DATASETS", "FASHION_MNIST_CLASSES", "EpisodeCollator", "EpisodeImages", "EpisodeItem",
           "EpisodeSampler", "episode_loader", "plain_episode_transform", "simclr_transform", "IMAGENET_MEAN", "IMAGENET_STD", "TransformedImageDataset",
           "UnreadableImageError", "build_transform", "class_names", "collate_images", "load_digits",
           "load_fashion_mnist", "load_fashion_mnist_lt", "load_image_dataset", "load_split", "read_idx", "read_image", "write_idx", "CompositeSegmentation",
           "FashionMNISTComposites", "FSS1000", "Coco20i", "Pascal5i"]
