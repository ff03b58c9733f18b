"""Hugging Face GPT-2 models and a GPT-2-sized tokenizer, built locally (nothing is downloaded)."""

import sysconfig
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from cllm.coord.data.tokenizer import EOS, BpeTokenizer

from .runs import SHAKESPEARE

GPT2_VOCAB = 50257


def gpt2_sized_tokenizer() -> BpeTokenizer:
    """A byte-level BPE of GPT-2's size, trained here: 50,256 merges and bytes from the standard library's
    top-level modules and tinyshakespeare, then <|endoftext|> as id 50256, as in GPT-2."""
    stdlib = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    texts = [path.read_text(encoding="utf-8", errors="ignore") for path in stdlib] + [SHAKESPEARE.read_text()]
    library = Tokenizer(models.BPE())
    library.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    library.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=GPT2_VOCAB - 1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    library.train_from_iterator(texts, trainer=trainer)
    library.add_special_tokens([AddedToken(EOS, special=True, normalized=False)])
    tokenizer = BpeTokenizer(library)
    assert tokenizer.vocab_size == GPT2_VOCAB and tokenizer.eos_id == GPT2_VOCAB - 1
    return tokenizer


def random_gpt2(directory: Path, tokenizer, seed: int = 0, noise: float = 0.0, **config) -> Path:
    """A GPT2LMHeadModel with random weights saved by transformers into ``directory`` with ``tokenizer``.

    ``noise`` is added to every weight (LayerNorms and biases included) so that every path of the
    model carries signal; ``config`` overrides GPT2Config's defaults."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, bos_token_id=tokenizer.eos_id,
                                       eos_token_id=tokenizer.eos_id, **config))
    if noise:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for tensor in model.parameters():
                tensor.add_(noise * torch.randn(tensor.shape, generator=generator))
    model.save_pretrained(directory)
    tokenizer.save(directory)
    return Path(directory)


def hf_logits(directory: Path, tokens: np.ndarray, **load) -> np.ndarray:
    """transformers' logits (T,V) of one sequence ``tokens`` (T,) from the model in ``directory``."""
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(directory, **load).eval()
    with torch.no_grad():
        return model(torch.tensor(tokens[None, :], dtype=torch.long)).logits[0].numpy()
