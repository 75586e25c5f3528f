"""medvlkit: medical vision-language models behind one API and one CLI."""

from medvlkit.data import ImageDataset, list_adapters, load_dataset, read_image
from medvlkit.errors import ImageReadError, MedvlkitError
from medvlkit.evaluate import evaluate_probs
from medvlkit.features import embed_images, embed_texts
from medvlkit.models import create_model, list_models
from medvlkit.prompts import PromptSet, list_prompt_sets, load_prompt_set, prompt_set_from_classes
from medvlkit.zeroshot import zeroshot_classify

__version__ = "0.1.0"
__all__ = ["ImageDataset", "ImageReadError", "MedvlkitError", "PromptSet", "create_model", "embed_images",
           "embed_texts", "evaluate_probs", "list_adapters", "list_models", "list_prompt_sets", "load_dataset",
           "load_prompt_set", "prompt_set_from_classes", "read_image", "zeroshot_classify"]
