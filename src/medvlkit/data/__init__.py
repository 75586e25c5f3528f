"""Reading medical images and datasets."""

from medvlkit.data.dataset import ImageDataset, list_adapters, load_dataset, register_adapter
from medvlkit.data.io import read_image

__all__ = ["ImageDataset", "list_adapters", "load_dataset", "read_image", "register_adapter"]
