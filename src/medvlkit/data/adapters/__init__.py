"""Built-in dataset adapters; importing this package registers them (detection runs in this order)."""

from medvlkit.data.adapters import captions, csv_labels, folder, medmnist  # noqa: F401
