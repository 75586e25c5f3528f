"""Named backbones: where their weights come from, their licence, preprocessing, and how to fetch them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from medvlkit.models.preprocess import PreprocessCfg

# CheXzero (rajpurkarlab/CheXzero): data_process.py `preprocess` (lines 31-41) letterboxes each X-ray into 320 x 320
# (long side to 320 with Image.ANTIALIAS = Lanczos, pasted centred on black); zero_shot.py (lines 377-385) normalises
# the 0-255 pixels with mean 101.48761 / std 83.43944 and resizes to 224 bicubic. Here on 0-1 pixels: /255.
CHEXZERO_PREPROCESS = PreprocessCfg(image_size=224, mean=(101.48761 / 255,) * 3, std=(83.43944 / 255,) * 3,
                                    interpolation="bicubic", resize_mode="pad", pad_size=320)


# MedSigLIP's model card resizes with TensorFlow's tf.image.resize(method="bilinear", antialias=False) to 448 px
# before its processor (whose own resize is then a no-op); the processor scales to [0, 1] and normalises by 0.5;
# 16-bit input is scaled to [0, 1] by its full range (high_bit="full_range"), not by medvlkit's percentile rule.
MEDSIGLIP_PREPROCESS = PreprocessCfg(image_size=448, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="tf_bilinear",
                                     resize_mode="squash", high_bit="full_range")


@dataclass(frozen=True)
class ModelPreset:
    """One registered backbone.

    Attributes:
        name: the short name users pass to ``--model``.
        spec: the source spec it resolves to when no local copy is found (``hf:<hub id>`` ...).
        description: what the model is and what it was trained on.
        licence: the weights' licence as stated by their source.
        preprocessing: image size, resize, mean/std as the weights expect.
        fetch: how to get the weights: ``medvlkit download <name>`` for hub repositories (they also download on
            first use), else the steps to follow by hand.
        local_name: file or folder to look for in ``$MEDVLKIT_MODELS/<name>/``.
        preprocess: the weights' preprocessing where their files do not carry it (applied by ``create_model``).
        hub: the hub repository the weights download from when ``spec`` names a local folder (``biomedclip``);
            ``hf:<id>`` presets download from their id.
    """

    name: str
    spec: str
    description: str
    licence: str
    preprocessing: str
    fetch: str
    local_name: str = ""
    preprocess: PreprocessCfg | None = None
    hub: str = ""

    @property
    def hub_id(self) -> str:
        """The hub repository the weights download from ('' for weights fetched by hand)."""
        source, _, ref = self.spec.partition(":")
        return self.hub or (ref if source == "hf" else "")

    def to_dict(self) -> dict:
        return asdict(self) | {"hub_id": self.hub_id}


_CLIP_PRE = "224 px, short side resized (bicubic) + centre crop, CLIP mean/std"


def _openai_fetch(arch: str, name: str) -> str:
    return (f"on a machine with a network: pip install openai-clip; python -c \"import clip; clip.load('{arch}', "
            f"download_root='$MEDVLKIT_MODELS/{name}')\" (the tokenizer ships with medvlkit)")


def _hf_fetch(hub_id: str, name: str) -> str:
    return f"medvlkit download {name} (downloads {hub_id} into the Hugging Face cache)"


PRESETS: dict[str, ModelPreset] = {p.name: p for p in [
    ModelPreset("lite", "lite", "medvlkit's embedded default (v2): EfficientNet-Lite0 (ImageNet) + "
                "all-MiniLM-L6-v2 towers with projection heads trained by `medvlkit pretrain` on medical "
                "image-caption pairs: chest X-ray (paediatric Kermany films, adult films), CT and MR (MedPix, brain "
                "MRI), breast ultrasound, lung histopathology, fundus photographs. Not validated on other "
                "hospitals, devices or diseases (see its model card)",
                "Apache-2.0 (heads); towers: Apache-2.0", "224 px squash, bilinear, mean/std 0.5",
                "ships with medvlkit (no download)"),
    ModelPreset("lite@1", "lite@1", "lite's first version (heads trained on Kermany, PneumoniaMNIST, MedPix, "
                "RetinaMNIST and photos only), kept so earlier results reproduce",
                "Apache-2.0 (heads); towers: Apache-2.0", "224 px squash, bilinear, mean/std 0.5",
                "ships with medvlkit (no download)"),
    ModelPreset("clip-vit-b32", "hf:openai/clip-vit-base-patch32", "OpenAI CLIP ViT-B/32 (400M web pairs)",
                "MIT", _CLIP_PRE, _hf_fetch("openai/clip-vit-base-patch32", "clip-vit-b32")),
    ModelPreset("clip-vit-b16", "hf:openai/clip-vit-base-patch16", "OpenAI CLIP ViT-B/16", "MIT", _CLIP_PRE,
                _hf_fetch("openai/clip-vit-base-patch16", "clip-vit-b16")),
    ModelPreset("clip-vit-l14", "hf:openai/clip-vit-large-patch14", "OpenAI CLIP ViT-L/14", "MIT", _CLIP_PRE,
                _hf_fetch("openai/clip-vit-large-patch14", "clip-vit-l14")),
    ModelPreset("pubmedclip-vit-b32", "hf:flaviagiammarino/pubmed-clip-vit-base-patch32",
                "PubMedCLIP (Eslami et al. 2023): CLIP ViT-B/32 fine-tuned on ROCO image-caption pairs, HF port",
                "MIT", _CLIP_PRE, _hf_fetch("flaviagiammarino/pubmed-clip-vit-base-patch32", "pubmedclip-vit-b32")),
    ModelPreset("chexzero", "openai-ckpt:$MEDVLKIT_MODELS/chexzero/best_64_5e-05_original_22000_0.864.pt",
                "CheXzero (Tiu et al. 2022): CLIP ViT-B/32 fine-tuned on MIMIC-CXR reports, OpenAI-format .pt",
                "MIT (code); weights under the CheXzero repository's terms (PhysioNet-derived)",
                CHEXZERO_PREPROCESS.describe(),
                "download the checkpoints linked from github.com/rajpurkarlab/CheXzero into $MEDVLKIT_MODELS/chexzero "
                "(the tokenizer ships with medvlkit)",
                "best_64_5e-05_original_22000_0.864.pt", CHEXZERO_PREPROCESS),
    ModelPreset("clip-rn50", "openai-ckpt:$MEDVLKIT_MODELS/clip-rn50/RN50.pt",
                "OpenAI CLIP ResNet-50 (ModifiedResNet + attention pooling), OpenAI's TorchScript release", "MIT",
                _CLIP_PRE, _openai_fetch("RN50", "clip-rn50"), "RN50.pt"),
    ModelPreset("clip-rn101", "openai-ckpt:$MEDVLKIT_MODELS/clip-rn101/RN101.pt", "OpenAI CLIP ResNet-101", "MIT",
                _CLIP_PRE, _openai_fetch("RN101", "clip-rn101"), "RN101.pt"),
    ModelPreset("clip-rn50x4", "openai-ckpt:$MEDVLKIT_MODELS/clip-rn50x4/RN50x4.pt", "OpenAI CLIP ResNet-50x4 (288 px)",
                "MIT", "288 px, short side resized (bicubic) + centre crop, CLIP mean/std",
                _openai_fetch("RN50x4", "clip-rn50x4"), "RN50x4.pt"),
    ModelPreset("pubmedclip-rn50", "openai-ckpt:$MEDVLKIT_MODELS/pubmedclip-rn50/PubMedCLIP_RN50.pth",
                "PubMedCLIP (Eslami et al. 2023): CLIP RN50 fine-tuned on ROCO, the authors' .pth release", "MIT",
                _CLIP_PRE, "download PubMedCLIP_RN50.pth from github.com/sarahESL/PubMedCLIP into "
                "$MEDVLKIT_MODELS/pubmedclip-rn50 (the tokenizer ships with medvlkit)",
                "PubMedCLIP_RN50.pth"),
    ModelPreset("eyeclip", "openai-ckpt:$MEDVLKIT_MODELS/eyeclip/eyeclip.pth",
                "EyeCLIP (Shi et al. 2025): CLIP ViT-B/32 trained on 11 ophthalmic modalities (fundus, OCT, FFA, "
                "ICGA, slit lamp...) with an MAE objective and keyword-guided captions; the release's MAE decoder "
                "is left out (CLIP's embeddings do not use it)",
                "no licence file in github.com/Michi-3000/EyeCLIP (ask the authors before redistributing)",
                _CLIP_PRE, "download the EyeCLIP_multimodal checkpoint linked from github.com/Michi-3000/EyeCLIP "
                "(Google Drive) and save it as $MEDVLKIT_MODELS/eyeclip/eyeclip.pth (the tokenizer ships with "
                "medvlkit)", "eyeclip.pth"),
    ModelPreset("biomedclip", "biomedclip:$MEDVLKIT_MODELS/biomedclip",
                "BiomedCLIP (Zhang et al. 2023): ViT-B/16 + PubMedBERT on PMC-15M figure-caption pairs; loaded by "
                "medvlkit's own modules (no open_clip, timm or torchvision needed), fine-tunable", "MIT",
                "224 px, short side resized (bicubic) + centre crop, CLIP mean/std; context 256 tokens",
                _hf_fetch("microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "biomedclip"), "",
                hub="microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"),
    ModelPreset("biovil", "biovil:$MEDVLKIT_MODELS/biovil",
                "BioViL (Boecking et al. 2022): ResNet-50 + CXR-BERT-specialized on MIMIC-CXR; no learned temperature "
                "(cosine similarity)", "MIT (hi-ml-multimodal); weights under Microsoft's research licence",
                "480 px: short side 512 + centre crop, bilinear, no mean/std",
                _hf_fetch("microsoft/BiomedVLP-CXR-BERT-specialized", "biovil") + " (holds "
                "biovil_image_resnet50_proj_size_128.pt and the text model)", "",
                hub="microsoft/BiomedVLP-CXR-BERT-specialized"),
    *[ModelPreset(f"medclip-{v}", f"medclip:$MEDVLKIT_MODELS/medclip-{v}",
                  f"MedCLIP (Wang et al. 2022): {arch} + Bio_ClinicalBERT, decoupled contrastive training on "
                  "MIMIC-CXR and CheXpert", "BSD (medclip 0.0.3 package metadata)",
                  "224 px grey, pasted on a black square of side max(224, w, h) then resized (bicubic), "
                  "mean 0.5863 / std 0.2795; texts padded to the batch's longest (padding enters the pooling)",
                  f"on a machine with a network: python -c \"from medclip import MedCLIPModel, {cls}; "
                  f"MedCLIPModel(vision_cls={cls}).from_pretrained('$MEDVLKIT_MODELS/medclip-{v}')\"; then "
                  "hf download emilyalsentzer/Bio_ClinicalBERT config.json vocab.txt --local-dir "
                  f"$MEDVLKIT_MODELS/medclip-{v}/text", "")
      for v, arch, cls in (("vit", "Swin-T", "MedCLIPVisionModelViT"), ("resnet", "ResNet-50", "MedCLIPVisionModel"))],
    ModelPreset("gloria", "gloria:$MEDVLKIT_MODELS/gloria/chexpert_resnet50.ckpt",
                 "GLoRIA (Huang et al. 2021): ResNet-50 + Bio_ClinicalBERT on CheXpert reports; medvlkit uses its "
                 "global embeddings (its own zero-shot adds word-region similarity)",
                 "as stated by github.com/marshuang80/gloria (not checked here)",
                 "224 px grey: long side to 256 (area), zero-padded square, centre crop 224, mean/std 0.5; "
                 "upsampled to 299 inside the model; texts cleaned and padded to 97 tokens",
                 "download chexpert_resnet50.ckpt (linked from github.com/marshuang80/gloria) into "
                 "$MEDVLKIT_MODELS/gloria; hf download emilyalsentzer/Bio_ClinicalBERT config.json "
                 "vocab.txt --local-dir $MEDVLKIT_MODELS/gloria/text", "chexpert_resnet50.ckpt"),
    ModelPreset("pmc-clip", "pmc-clip:$MEDVLKIT_MODELS/pmc-clip/checkpoint.pt",
                "PMC-CLIP (Lin et al. 2023): CLIP ModifiedResNet-50 + PubMedBERT ([CLS], projected) trained on 1.6M "
                "PubMed Central figure-caption pairs (PMC-OA); its MLM fusion module is left out",
                "MIT (github.com/WeixiongLin/PMC-CLIP)",
                "224 px, short side resized (bicubic) + centre crop, CLIP mean/std; texts padded to 77 tokens, "
                "no attention mask (the padding takes part, as PMC-CLIP runs it)",
                "hf download axiong/pmc_oa checkpoint.pt --repo-type dataset --local-dir $MEDVLKIT_MODELS/pmc-clip; "
                "hf download microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext config.json vocab.txt "
                "tokenizer_config.json --local-dir $MEDVLKIT_MODELS/pmc-clip/text", "checkpoint.pt"),
    ModelPreset("flair", "flair:$MEDVLKIT_MODELS/flair/flair_resnet.pth",
                "FLAIR (Silva-Rodriguez et al. 2025): ResNet-50 + Bio_ClinicalBERT trained on 37 public colour fundus "
                "datasets (284,660 images) with expert-knowledge descriptions; its prompt dictionary ships as the "
                "prompt sets flair_fundus and flair_dr_grading", "Apache-2.0 (github.com/jusiro/FLAIR)",
                "512 px: long side resized (bilinear), black padding right and bottom, pixels in [0, 1] with no "
                "mean/std; texts padded to the longest of the call (padding enters the pooling)",
                "download the weights.zip FLAIR's flair/modeling/constants.py names (Google Drive id "
                "1l24_2IzwQdnaa034I0zcyDLs_zMujsbR) and unzip flair_resnet.pth into $MEDVLKIT_MODELS/flair; "
                "hf download emilyalsentzer/Bio_ClinicalBERT config.json vocab.txt --local-dir "
                "$MEDVLKIT_MODELS/flair/text",
                "flair_resnet.pth"),
    ModelPreset("conch", "conch:$MEDVLKIT_MODELS/conch",
                "CONCH (Lu et al. 2024): CoCa ViT-B/16 at 448 px + a 12-layer text transformer, trained on 1.17M "
                "histopathology image-caption pairs; medvlkit reads its contrastive towers (the caption decoder is "
                "left out)", "CC-BY-NC-ND 4.0, non-commercial academic research only (gated: accept the terms on "
                "the hub)", "448 px, short side resized (bicubic) + centre crop, CLIP mean/std; texts padded to 127 "
                "tokens + a class token", "accept the terms at huggingface.co/MahmoodLab/CONCH and set HF_TOKEN; hf "
                "download MahmoodLab/CONCH pytorch_model.bin --local-dir $MEDVLKIT_MODELS/conch; copy "
                "conch_byte_level_bpe_uncased.json from github.com/mahmoodlab/CONCH "
                "(conch/open_clip_custom/tokenizers/) there too (or: medvlkit download conch, then --tokenizer FILE)",
                "", hub="MahmoodLab/CONCH"),
    *[ModelPreset(f"unimed-clip-{v}", f"unimed:$MEDVLKIT_MODELS/unimed-clip-{v}/{file}",
                  f"UniMed-CLIP (Khattak et al. 2024): open_clip {arch} (QuickGELU) + {bert}, trained on 5.3M "
                  "image-text pairs of six modalities (X-ray, CT, MRI, ultrasound, pathology, fundus) built from "
                  "public datasets with LLM-written captions", "CC-BY-NC-4.0 (the weights' hub pages)",
                  f"{size} px, short side resized (bicubic) + centre crop, CLIP mean/std; texts up to 256 tokens",
                  f"download {file} (linked from github.com/mbzuai-oryx/UniMed-CLIP; also on the hub under "
                  f"UzairK/) into $MEDVLKIT_MODELS/unimed-clip-{v}; hf download microsoft/{bert} vocab.txt "
                  f"config.json tokenizer_config.json --local-dir $MEDVLKIT_MODELS/unimed-clip-{v}/text", file)
      for v, arch, size, bert, file in (
          ("b16", "ViT-B/16", 224, "BiomedNLP-BiomedBERT-base-uncased-abstract", "unimed_clip_vit_b16.pt"),
          ("l14-base", "ViT-L/14", 336, "BiomedNLP-BiomedBERT-base-uncased-abstract",
           "unimed_clip_vit_l14_base_text_encoder.pt"),
          ("l14-large", "ViT-L/14", 336, "BiomedNLP-BiomedBERT-large-uncased-abstract",
           "unimed_clip_vit_l14_large_text_encoder.pt"))],
    ModelPreset("bmc-clip", "bmc:$MEDVLKIT_MODELS/bmc-clip",
                "BMC-CLIP / BMCA-CLIP (Lozano et al. 2025): open_clip ViT-L/14 continually pretrained on BIOMEDICA "
                "(24M image-caption pairs from PubMed Central; the concept-filtered variant, BMC_CLIP_CF)",
                "MIT (the hub repository's)", "224 px, short side resized (bicubic) + centre crop, CLIP mean/std",
                _hf_fetch("BIOMEDICA/BMC_CLIP_CF", "bmc-clip"), "", hub="BIOMEDICA/BMC_CLIP_CF"),
    ModelPreset("rad-dino", "hf:microsoft/rad-dino",
                "RAD-DINO (Perez-Garcia et al. 2024): DINOv2 ViT-B/14 trained self-supervised on chest X-rays from "
                "five public and private datasets; image-only (no text tower): embed, probe, search by image, "
                "supervised fine-tuning", "MIT (the model card's current terms; earlier revisions: MSRLA)",
                "518 px: short side + centre crop, bicubic, the processor's mean/std",
                _hf_fetch("microsoft/rad-dino", "rad-dino")),
    ModelPreset("dinov2-b14", "hf:facebook/dinov2-base",
                "DINOv2 ViT-B/14 (LVD-142M natural images, self-supervised); image-only (no text tower)",
                "Apache-2.0", "224 px: short side 256 + centre crop 224, bicubic, ImageNet mean/std",
                _hf_fetch("facebook/dinov2-base", "dinov2-b14")),
    ModelPreset("siglip-b16", "hf:google/siglip-base-patch16-224", "SigLIP ViT-B/16 (WebLI)", "Apache-2.0",
                "224 px squash, bicubic, mean/std 0.5; texts padded to 64 tokens",
                _hf_fetch("google/siglip-base-patch16-224", "siglip-b16")),
    ModelPreset("medsiglip", "hf:google/medsiglip-448",
                "MedSigLIP-448 (Google HAI-DEF): SigLIP tuned on de-identified medical images and text",
                "Health AI Developer Foundations terms (gated; accept them on the hub)",
                "448 px squash with TensorFlow's bilinear resize without antialiasing (the model card's; not the "
                "repository processor's antialiased PIL bilinear), mean/std 0.5; 16-bit PNG/TIFF divided by 65535 "
                "(the card's [0, 1] scaling); texts padded to 64 tokens",
                _hf_fetch("google/medsiglip-448", "medsiglip"), preprocess=MEDSIGLIP_PREPROCESS),
]}
