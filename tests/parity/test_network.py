"""The MobileViTv2 network against transformers, on seeded non-degenerate random weights."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from transformers import MobileViTV2Config as HFConfig
from transformers import MobileViTV2ForImageClassification as HFClassifier

from app.intake.preprocess import Preprocessing
from app.nn.build import build_network
from app.nn.configs import MobileViTV2Config
from app.nn.mobilevitv2 import MobileViTBlock, randomize_weights
from app.repository import CheckpointError, read_model_dir
from tests.support import assert_matches, smooth_images

NUM_LABELS = 1000


def save_hf_checkpoint(
    directory: Path, width: float, image_size: int, seed: int, safe: bool = True
) -> HFClassifier:
    """A transformers model with every float parameter and buffer randomised, saved in HF format."""
    config = HFConfig(
        width_multiplier=width,
        image_size=image_size,
        num_labels=NUM_LABELS,
        id2label={i: f"class {i}" for i in range(NUM_LABELS)},
        label2id={f"class {i}": i for i in range(NUM_LABELS)},
        architectures=["MobileViTV2ForImageClassification"],
    )
    model = HFClassifier(config).eval()
    randomize_weights(model, seed, head_names=("classifier",))
    model.save_pretrained(directory, safe_serialization=safe)
    if not safe:  # older Hub repos ship only pytorch_model.bin
        for stale in directory.glob("*.safetensors"):
            stale.unlink()
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    preprocessing = Preprocessing(
        resize_shortest_edge=image_size * 288 // 256, crop_height_width=(image_size,) * 2
    )
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessing.to_hf_config()))
    return model


@pytest.mark.parametrize("width", [0.5, 1.0])
@pytest.mark.parametrize("image_size", [256, 384])
def test_logits_match_transformers(tmp_path: Path, width: float, image_size: int) -> None:
    reference = save_hf_checkpoint(tmp_path, width, image_size, seed=int(width * 100) + image_size)
    ours = build_network(read_model_dir(tmp_path))
    pixels = smooth_images(2, image_size, image_size, seed=7)
    with torch.inference_mode():
        expected = reference(pixel_values=pixels).logits
        actual = ours(pixels)
    assert actual.shape == (2, NUM_LABELS)
    # Non-degenerate: logits spread across classes (std > 0.5) and depend on the image by far more
    # than the tolerance (random deep nets are dominated by biases, so the image effect is smaller).
    assert expected.std() > 0.5
    assert (expected[0] - expected[1]).abs().max() > 100 * 1e-4
    assert_matches(actual, expected)


@pytest.mark.parametrize("width", [0.75, 1.25, 1.5, 1.75, 2.0])
def test_every_width_builds_with_transformers_key_layout(width: float) -> None:
    from app.nn.mobilevitv2 import MobileViTV2ForImageClassification

    ours = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=width), 10)
    reference = HFClassifier(HFConfig(width_multiplier=width, num_labels=10))
    theirs = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == theirs


def test_other_multiples_of_32_run(tmp_path: Path) -> None:
    save_hf_checkpoint(tmp_path, 0.5, 256, seed=3)
    ours = build_network(read_model_dir(tmp_path))
    with torch.inference_mode():
        # 224 / 32 = 7 is odd: the last stage grows its map to 8x8 (ml-cvnets' behaviour).
        for height, width in ((320, 224), (224, 224), (512, 160)):
            logits = ours(smooth_images(1, height, width, seed=height))
            assert logits.shape == (1, NUM_LABELS) and torch.isfinite(logits).all()


def test_patch_unfold_matches_torch_unfold_and_fold() -> None:
    block = MobileViTBlock(MobileViTV2Config(), 16, 32, 16, 1)
    x = torch.randn(2, 5, 8, 12)
    reference = torch.nn.functional.unfold(x, kernel_size=2, stride=2).reshape(2, 5, 4, -1)
    patches = block.unfold(x)
    assert torch.equal(patches, reference)
    assert torch.equal(block.fold(patches, 8, 12), x)


def test_pytorch_model_bin_loads_with_weights_only(tmp_path: Path) -> None:
    reference = save_hf_checkpoint(tmp_path, 0.5, 256, seed=11, safe=False)
    model_dir = read_model_dir(tmp_path)
    assert model_dir.weights.name == "pytorch_model.bin"
    pixels = smooth_images(1, 256, 256, seed=1)
    with torch.inference_mode():
        assert_matches(build_network(model_dir)(pixels), reference(pixel_values=pixels).logits)


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('owned')",))


def test_malicious_pickle_is_refused_without_running_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_hf_checkpoint(tmp_path, 0.5, 256, seed=1, safe=False)
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weights": _Exploit()}, f)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="weights_only"):
        build_network(read_model_dir(tmp_path))
    assert not (tmp_path / "PWNED").exists()


def test_wrong_width_checkpoint_is_refused_with_the_mismatch(tmp_path: Path) -> None:
    save_hf_checkpoint(tmp_path, 0.5, 256, seed=1)
    config_path = tmp_path / "config.json"
    config_path.write_text(
        config_path.read_text().replace('"width_multiplier": 0.5', '"width_multiplier": 1.0')
    )
    with pytest.raises(CheckpointError, match="wrong shape"):
        build_network(read_model_dir(tmp_path))


def test_demo_model_loads_in_transformers_with_identical_logits(model_dir: Path) -> None:
    reference, info = HFClassifier.from_pretrained(model_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ours = build_network(read_model_dir(model_dir))
    pixels = smooth_images(1, 256, 256, seed=0)
    with torch.inference_mode():
        expected = reference.eval()(pixel_values=pixels).logits
        assert expected.std() > 0.5
        assert_matches(ours(pixels), expected)
