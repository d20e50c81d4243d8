"""Model loading by name: a bundled model (bundled.py converts it once), the tests' tiny random model, a local
folder or a hub id; the content fingerprint the staleness rule records; LoRA target names; chat-prompt rendering.

`load_model(name)` returns a `Loaded` with the model, tokenizer and a weights hash.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:  # torch and transformers load on first use, so `introspect models` and `--help` start fast
    from transformers import PreTrainedModel

from .bundled import BUNDLED, bundled_path, smollm2_tokenizer
from .errors import UserError
from .hashing import file_digest, weights_hash
from .runtime import set_threads


TINY = "tiny-random"
KNOWN = [*BUNDLED, TINY]


@dataclass
class Loaded:
    model: PreTrainedModel
    tokenizer: Any
    weights_hash: str  # content hash of the weights as loaded (hashing.weights_hash; "" when not asked for)


def list_models() -> list[tuple[str, str]]:
    rows = [(n, b.description) for n, b in BUNDLED.items()]
    rows.append((TINY, "2-layer random Llama with SmolLM2's tokenizer, seeded (for tests)"))
    rows.append(("PATH", "any local Hugging Face model directory"))
    rows.append(("ORG/NAME", "a hub id, when a hub is reachable"))
    return rows


def tiny_random(seed: int = 0, layers: int = 2, hidden: int = 64) -> tuple[PreTrainedModel, Any]:
    """A small random Llama with SmolLM2's tokenizer: the tests' model."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = smollm2_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg), tok


def linear_names(model: Any) -> list[str]:
    """The leaf names of a model's Linear modules (q_proj, ...): what a LoRA target list can name."""
    import torch

    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def linear_module_names(name: str) -> list[str]:
    """`linear_names` of a model read from its config on the meta device (no weights loaded); empty when the config
    cannot be read here (the trainer then checks the loaded model)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    try:
        if name == TINY:
            cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                              num_attention_heads=4, num_key_value_heads=2)
        else:
            cfg = AutoConfig.from_pretrained(bundled_path(name) if name in BUNDLED else name)
        with torch.device("meta"):
            return linear_names(AutoModelForCausalLM.from_config(cfg))
    except (OSError, ValueError, UserError):
        return []


def check_lora_targets(targets: Any, linear: list[str], model_name: str) -> None:
    """A LoRA target list that names none of the model's Linear modules is a UserError naming the ones it could."""
    if linear and not isinstance(targets, str) and not set(targets) & set(linear):
        raise UserError(f"config key train.lora.target_modules {list(targets)} matches no module of {model_name}; its "
                        f"Linear modules are {', '.join(linear)}")


def _load_dir_or_hub(name: str) -> tuple[PreTrainedModel, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    is_dir = Path(name).is_dir()
    if not is_dir and ("/" not in name or name.startswith((".", "/"))):
        raise UserError(f"unknown model {name!r}: known models are {', '.join(KNOWN)}, a local model directory, or a hub id")
    where = "local directory" if is_dir else "hub id (is a model hub reachable from here?)"
    try:
        AutoConfig.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name)
    except OSError as e:
        raise UserError(f"could not load model {name!r} as a {where}: {e}") from None
    except Exception as e:  # a truncated weights file: safetensors' own SafetensorError, or a torch unpickling error
        raise UserError(f"could not load the weights of model {name!r} ({type(e).__name__}: {e}): the weights file is "
                        f"truncated or corrupt; copy the model folder again") from None
    try:
        return model, AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"model {name!r} has no usable tokenizer ({type(e).__name__}: {str(e)[:200]}): the "
                        f"{where} must hold the tokenizer files too (tokenizer.json or tokenizer.model with its "
                        f"config)") from None


def fingerprint(name: str, *, seed: int = 0) -> str:
    """Content hash of a model's weights files, without loading it (what the staleness rule records)."""
    if name == TINY:
        return f"tiny-random:{seed}"
    if name in BUNDLED:
        folder = bundled_path(name)
    elif Path(name).is_dir():
        folder = Path(name)
    else:
        return f"hub:{name}"  # a hub id: its revision is not resolved here
    files = sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin")])
    return ",".join(f"{f.name}:{file_digest(f)}" for f in files) or f"dir:{folder}"


@contextmanager
def peft_deprecation_silenced() -> Iterator[None]:
    """Around peft calls only: silence the one third-party deprecation we cannot fix at our call sites, by its exact
    message (peft 0.21 reads `model.is_gradient_checkpointing` when it wraps or loads an adapter; transformers 5.2x
    deprecates it). Every other warning still shows; our KV-cache calls use the new name (behavior.cache_kwarg)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def load_model(name: str, *, seed: int = 0, hash_weights: bool = True, device: str = "cpu") -> Loaded:
    """Load a model by registry name, local directory or hub id; fp32 weights, eval mode, all cores, on `device`
    (`devices.resolve`; the trainer places its model through accelerate instead)."""
    from .devices import resolve

    from transformers import AutoModelForCausalLM, AutoTokenizer
    set_threads()
    loader: Callable[[], tuple[PreTrainedModel, Any]]
    if name in BUNDLED:
        loader = lambda: (AutoModelForCausalLM.from_pretrained(bundled_path(name)), AutoTokenizer.from_pretrained(bundled_path(name)))  # noqa: E731
    elif name == TINY:
        loader = lambda: tiny_random(seed)  # noqa: E731
    else:
        loader = lambda: _load_dir_or_hub(name)  # noqa: E731
    model, tok = loader()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.eval()
    wh = weights_hash(model) if hash_weights else ""  # hashed on CPU: the same model hashes the same everywhere
    return Loaded(model.to(resolve(device)), tok, wh)


def render_prompt(tokenizer: Any, messages: list[dict[str, str]], assistant_prefix: str = "") -> str:
    """Chat-format `messages` ending at the assistant's turn, followed by `assistant_prefix`.

    Models without a chat template (base models) get a plain `System:/User:/Assistant:` layout.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        text = "\n\n".join(parts) + "\n\nAssistant:"
        assistant_prefix = " " + assistant_prefix if assistant_prefix else assistant_prefix
    return text + assistant_prefix
