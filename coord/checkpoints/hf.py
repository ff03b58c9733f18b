"""The Hugging Face side of a model directory: GPT-2 configs and weights, read and written.

Reading takes any directory transformers' ``GPT2LMHeadModel.save_pretrained`` writes (and
the bare ``GPT2Model`` layout of the original GPT-2 release) into a GPTConfig and a flat
parameter buffer. Every config key is either computed, neutral (it does not change the
function: dropout rates, token ids, generation defaults, bookkeeping) or refused by name:
a model CLLM cannot compute exactly is never loaded approximately.
"""

import json
import re
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from cllm.kernels.gelu import ACTIVATIONS
from cllm.kernels.model import GPTConfig, ParamLayout

from ..data.tokenizer import EOS
from ..errors import UserError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PREFIX = "transformer."
HEAD = "lm_head.weight"
SIZES = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
# keys whose values do not change what the language model computes
NEUTRAL = {
    "transformers_version", "architectures", "model_type", "_name_or_path", "_commit_hash", "_attn_implementation",
    "dtype", "torch_dtype", "use_bfloat16", "torchscript", "return_dict", "use_return_dict", "output_hidden_states",
    "output_attentions", "output_past", "use_cache", "gradient_checkpointing", "chunk_size_feed_forward",
    "is_decoder", "tie_encoder_decoder", "cross_attention_hidden_size", "tf_legacy_loss", "n_ctx",
    "resid_pdrop", "embd_pdrop", "attn_pdrop", "initializer_range", "summary_type", "summary_use_proj",
    "summary_activation", "summary_proj_to_labels", "summary_first_dropout", "id2label", "label2id", "num_labels",
    "_num_labels", "problem_type", "finetuning_task", "task_specific_params", "tokenizer_class", "prefix",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id", "max_length",
    "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty", "temperature",
    "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
}
# keys CLLM computes only at one value
ONLY = {"add_cross_attention": False, "is_encoder_decoder": False, "pruned_heads": {}}
FLAGS = {"tie_word_embeddings": True, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
         "reorder_and_upcast_attn": False}
COMPUTED = set(SIZES) | set(FLAGS) | {"n_inner", "activation_function", "layer_norm_epsilon"}
# the causal-mask buffers older transformers saved beside the weights
MASK_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
READABLE_DTYPES = ("F32", "F16")
MAX_SIZE = 2**24  # bounds each size in config.json, so that products of sizes stay exact in int64


def read_config(directory: Path) -> GPTConfig:
    """The GPTConfig of ``directory/config.json``; refuses, naming key and value, what CLLM does not compute."""
    file = Path(directory) / CONFIG_FILE
    try:
        raw = json.loads(file.read_text())
    except FileNotFoundError:
        raise UserError(f"{file} is missing; the model directory is incomplete") from None
    except (OSError, ValueError) as error:
        raise UserError(f"{file} is not a GPT-2 config ({error}); the file is damaged") from None
    if not isinstance(raw, dict):
        raise UserError(f"{file} is not a GPT-2 config (not a JSON object); the file is damaged")

    def refuse(key, why):
        raise UserError(f"{file}: {key} = {json.dumps(raw.get(key))} {why}")

    if raw.get("model_type", "gpt2") != "gpt2":
        refuse("model_type", "is not a GPT-2 model; CLLM computes GPT-2 only")
    for key in raw:
        if key not in NEUTRAL | COMPUTED | set(ONLY):
            refuse(key, "is not a GPT-2 setting CLLM computes; remove it if it does not change the model")
    for key, value in ONLY.items():
        if key in raw and raw[key] != value:
            refuse(key, f"is not supported; CLLM computes only {json.dumps(value)}")
    for key in SIZES:
        if key not in raw:
            raise UserError(f"{file} lacks {key}; it is not a GPT-2 config")
        if not is_positive_int(raw[key]):
            refuse(key, "is not a positive whole number")
        if raw[key] > MAX_SIZE:
            refuse(key, f"is larger than any model CLLM can hold (at most {MAX_SIZE})")
    if raw["n_embd"] % raw["n_head"]:
        refuse("n_embd", f"is not divisible by n_head = {raw['n_head']}")
    if raw.get("n_inner") is not None and not (is_positive_int(raw["n_inner"]) and raw["n_inner"] <= MAX_SIZE):
        refuse("n_inner", "is not a positive whole number or null")
    activation = raw.get("activation_function", "gelu_new")
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        refuse("activation_function", f"is not supported; CLLM computes {' and '.join(ACTIVATIONS)}")
    eps = raw.get("layer_norm_epsilon", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        refuse("layer_norm_epsilon", "is not a number between 0 and 1")
    flags = {key: raw.get(key, default) for key, default in FLAGS.items()}
    for key, value in flags.items():
        if not isinstance(value, bool):
            refuse(key, "is not true or false")
    return GPTConfig(vocab_size=raw["vocab_size"], block_size=raw["n_positions"], n_layer=raw["n_layer"],
                     n_head=raw["n_head"], n_embd=raw["n_embd"], n_inner=raw.get("n_inner"), activation=activation,
                     ln_eps=float(eps), tied_head=flags["tie_word_embeddings"],
                     scale_attn_weights=flags["scale_attn_weights"],
                     scale_attn_by_inverse_layer_idx=flags["scale_attn_by_inverse_layer_idx"],
                     reorder_and_upcast_attn=flags["reorder_and_upcast_attn"])


def is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def hf_config(cfg: GPTConfig, eos_id: int, dropout: float = 0.0) -> dict:
    """``config.json`` of ``cfg``: GPT2LMHeadModel computes the same logits; the dropout rates
    are the run's."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": cfg.n_inner,
        "activation_function": cfg.activation,
        "layer_norm_epsilon": cfg.ln_eps,
        "tie_word_embeddings": cfg.tied_head,
        "scale_attn_weights": cfg.scale_attn_weights,
        "scale_attn_by_inverse_layer_idx": cfg.scale_attn_by_inverse_layer_idx,
        "reorder_and_upcast_attn": cfg.reorder_and_upcast_attn,
        "resid_pdrop": dropout,
        "embd_pdrop": dropout,
        "attn_pdrop": dropout,
        "initializer_range": 0.02,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
    }


def tokenizer_side_files(cfg: GPTConfig, eos_id: int) -> dict:
    """file name -> JSON of what transformers reads beside ``tokenizer.json`` and the weights."""
    return {
        "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS, "eos_token": EOS,
                                  "model_max_length": cfg.block_size, "clean_up_tokenization_spaces": False},
        "special_tokens_map.json": {"bos_token": EOS, "eos_token": EOS},
        "generation_config.json": {"bos_token_id": eos_id, "eos_token_id": eos_id},
    }


def hf_name(name: str) -> str:
    """The checkpoint name of a ParamLayout tensor."""
    return name if name == HEAD else PREFIX + name


def hf_tensors(cfg: GPTConfig, params: np.ndarray) -> dict:
    """Checkpoint name -> contiguous array of every parameter."""
    return {hf_name(name): np.ascontiguousarray(view) for name, view in ParamLayout(cfg).views(params).items()}


def fitting_layout(directory: Path, cfg: GPTConfig) -> ParamLayout:
    """The layout of ``cfg``, refused before anything is allocated when the weight files are too small to
    hold it (a damaged or hostile config.json must not ask for terabytes)."""
    files = weight_files(directory)
    try:
        held = sum(file.stat().st_size for file in files)
    except OSError as error:
        raise UserError(f"{error.filename} cannot be read ({error.strerror}); the model directory is incomplete") \
            from None
    if cfg.n_layer > held // 64:  # a block is a dozen tensors of a few bytes at the very least
        raise UserError(f"{directory}: config.json says n_layer = {cfg.n_layer}, more than {sum(1 for _ in files)} "
                        f"weight file(s) of {held} bytes hold; the config belongs to another model")
    layout = ParamLayout(cfg)
    if layout.size > 2 * held:  # far more than float16 weights of that size can hold: allocate nothing
        raise UserError(f"{directory}: {', '.join(f.name for f in files)} hold {held} bytes, far too few for the "
                        f"{layout.size} parameters config.json implies; a weight file is truncated or the config "
                        "belongs to another model")
    return layout


def weight_files(directory: Path) -> list:
    """The safetensors files holding a model's weights: one, or the shards an index names."""
    directory = Path(directory)
    if (directory / WEIGHTS_FILE).exists():
        return [directory / WEIGHTS_FILE]
    index = directory / WEIGHTS_INDEX
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise UserError(f"{index} cannot be read ({error}); the file is damaged") from None
        return [directory / shard for shard in shards]
    if (directory / "pytorch_model.bin").exists():
        raise UserError(f"{directory} holds pytorch_model.bin, which CLLM does not read (it is a pickle); write "
                        "model.safetensors with transformers: GPT2LMHeadModel.from_pretrained(DIR).save_pretrained(DIR)")
    raise UserError(f"{directory / WEIGHTS_FILE} is missing; the model directory is incomplete")


def read_weights(directory: Path, cfg: GPTConfig) -> np.ndarray:
    """The flat float32 parameters of ``cfg`` from the directory's safetensors (float32 or float16)."""
    layout = fitting_layout(directory, cfg)
    params = np.empty(layout.size, dtype=np.float32)
    views = layout.views(params)
    found = set()
    for file in weight_files(directory):
        try:
            with safe_open(str(file), framework="numpy") as f:
                for key in f.keys():
                    name = key if key == HEAD else key.removeprefix(PREFIX)
                    if name == HEAD and cfg.tied_head or MASK_BUFFER.match(name):
                        continue  # a tied head is the embedding, as transformers ties it
                    if name not in views:
                        raise UserError(f"{file} has a tensor {key} that a GPT-2 language model with this "
                                        "config.json does not have; the weights belong to another model")
                    dtype = f.get_slice(key).get_dtype()
                    if dtype not in READABLE_DTYPES:
                        raise UserError(f"{file}: {key} is {dtype}; CLLM reads float32 or float16 weights "
                                        "(convert with transformers: model.float().save_pretrained(DIR))")
                    tensor = f.get_tensor(key)
                    if tensor.shape != views[name].shape:
                        raise UserError(f"{file}: {key} has shape {tuple(tensor.shape)}, config.json implies "
                                        f"{views[name].shape}")
                    views[name][...] = tensor
                    found.add(name)
        except FileNotFoundError:
            raise UserError(f"{file} is missing; the model directory is incomplete") from None
        except (SafetensorError, OSError, ValueError) as error:
            raise UserError(f"{file} cannot be read ({error}); the file is damaged") from None
    missing = [name for name in views if name not in found]
    if missing:
        raise UserError(f"{directory} has no tensor {hf_name(missing[0])}; the weights do not match config.json")
    return params
