"""Shared fixtures: small random-weight models of real architectures (no download); the benchmark
scripts as modules."""
import importlib.util
import signal
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (its constants and helpers: what a result file must hold)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, **overrides)
    return LlamaForCausalLM(config).eval()


def tiny_opt(seed: int = 0, **overrides) -> OPTForCausalLM:
    torch.manual_seed(seed)
    config = OPTConfig(vocab_size=128, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=64,
                       **overrides)
    return OPTForCausalLM(config).eval()


@pytest.fixture(params=["llama", "opt"])
def tiny_model(request):
    return tiny_llama() if request.param == "llama" else tiny_opt()


@pytest.fixture
def tiny_calib():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 128, (6, 16), generator=g)


@pytest.fixture(scope="session")
def smollm2():
    """The real offline model (about 20 s the first time, then cached as safetensors)."""
    import sparselib

    return sparselib.load_model()


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_reaches_the_tests():
    """Run the tests as from a terminal. A shell that starts them in the background (``make test &``,
    nohup, some CI runners) hands them SIGINT ignored, and a command started that way rightly keeps
    ignoring it (sparselib.interrupts), which would turn every Ctrl-C test into a run that is never
    interrupted. A Python handler here is reset to the default in the processes the tests start, so
    the commands they run see Ctrl-C too."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
