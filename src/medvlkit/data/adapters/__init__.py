"""Built-in dataset adapters; importing this package registers them. ``--format auto`` asks them by priority
(highest first; the catch-all image folder last), not by import order."""

from medvlkit.data.adapters import captions, csv_labels, dicomweb, folder, medmnist, medpix  # noqa: F401
