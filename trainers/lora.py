"""The shared LoRA training core (ComfyUI-free), one import for callers: every public name of the modules below.

Used by DPG personalization (``trainers/dpg.py``) and reward-ranked fine-tuning. The code lives by concern:

* :mod:`.base_model`   :class:`SDComponents`, :func:`load_base` (diffusers folder, catalogue key / name, or a
  single-file SD1.x / SD2.x / SDXL checkpoint, offline with the configs bundled in ``weights/configs``),
  :func:`find_clip_tokenizer`
* :mod:`.lora_weights` :class:`LoraConfig`, :func:`add_lora`, :func:`lora_state_dict` (kohya names),
  :func:`load_lora_into`, :func:`export_lora`
* :mod:`.batches`      training data: :func:`prepare_image`, :func:`check_dataset`, :class:`Batch`, prompt and
  latent encoding
* :mod:`.objectives`   :class:`Objective` protocol, :class:`NoiseMSE`
* :mod:`.checkpoints`  resumable checkpoints (save / load / RNG) and the run's ``log.csv``
* :mod:`.run_folder`   run folders: named by the whole output name, settings recorded in ``run.json``, one
  process at a time (``run.lock``); :mod:`.lora_formats` reads diffusers / peft LoRA files
* :mod:`.sampling`     :func:`generate`, :func:`save_samples`, :func:`plot_loss`
* :mod:`.loop`         :class:`TrainConfig`, :class:`Trainer`, :func:`train_lora` → :class:`TrainResult`

A new objective is a module of its own implementing :class:`Objective`; it does not grow these files.
"""
from __future__ import annotations

from .base_model import (CONFIG_DIR, SDComponents, _bundled_config, _config_hint, _family_from_keys, _finish,  # noqa: F401
                         _load_diffusers_folder, _load_single_file, _read_single_file_keys, _resolve_base,
                         _tokenizers_for, check_base, find_clip_tokenizer, load_base)
from .batches import (Batch, _build_pixels, _tokenize, check_dataset, encode_images, encode_prompts,  # noqa: F401
                      prepare_image, sample_latents)
from .checkpoints import (_append_csv, _rng_state, _save_rank_rng, _set_rng_state, _trainable_named,  # noqa: F401
                          latest_checkpoint, load_checkpoint, read_log, save_checkpoint, truncate_log)
from .lora_weights import (LoraConfig, _check_targets, _lora_modules, _te_prefixes, add_lora,  # noqa: F401
                           canonical_te_path, export_lora, kohya_name, load_lora_into, lora_metadata,
                           lora_state_dict, module_map, trainable_parameters)
from .loop import (RESUMABLE_CHANGES, TrainConfig, Trainer, TrainResult, _eta, _make_accelerator,  # noqa: F401
                   _ProgressAdapter, check_resume, data_fingerprint, normalize_inference_tensors, run_settings,
                   train_lora)
from .objectives import NoiseMSE, Objective  # noqa: F401
from .sampling import _save_samples, generate, plot_loss, save_samples  # noqa: F401
