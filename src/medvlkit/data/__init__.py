"""Reading medical images and datasets. Importing the package registers the built-in dataset formats
(:mod:`medvlkit.data.adapters`), which register themselves where they are defined."""

import medvlkit.data.adapters  # noqa: F401  (registers the built-in adapters)
from medvlkit.data.dataset import ImageDataset, list_adapters, load_dataset, register_adapter
from medvlkit.data.io import read_image

__all__ = ["ImageDataset", "list_adapters", "load_dataset", "read_image", "register_adapter"]
