import torch

from safetensors.torch import save_file

from backend.loading.checkpoint_file import read_state_dict
from backend.loading.detect import Family
from backend.loading.loader import SingleFileModel


def _spec(models_dir, name):
    return SingleFileModel(models_dir / "Stable-diffusion" / name).spec  # the loader's own path: index only


def test_sd1_is_detected_with_its_sizes(models_dir, tiny):
    spec = _spec(models_dir, "sd1.safetensors")
    assert spec.family is Family.SD1
    assert not spec.is_inpainting
    assert spec.unet_config["block_out_channels"] == [32, 64]
    assert spec.unet_config["down_block_types"] == ["CrossAttnDownBlock2D", "DownBlock2D"]
    assert spec.unet_config["cross_attention_dim"] == 64
    assert spec.unet_config["use_linear_projection"] is False
    assert spec.text_encoders[0].config["num_hidden_layers"] == 2


def test_sd2_uses_openclip_without_its_last_layer(models_dir):
    spec = _spec(models_dir, "sd2-v.safetensors")
    assert spec.family is Family.SD2
    assert spec.unet_config["use_linear_projection"] is True
    # The file holds 3 OpenCLIP layers; SD 2.x conditions on the penultimate one.
    assert spec.text_encoders[0].config["num_hidden_layers"] == 2
    assert spec.text_encoders[0].pad_token == "!"


def test_sdxl_is_detected_with_two_encoders_and_added_embedding(models_dir):
    spec = _spec(models_dir, "sdxl.safetensors")
    assert spec.family is Family.SDXL
    assert spec.unet_config["addition_embed_type"] == "text_time"
    assert spec.unet_config["addition_time_embed_dim"] == 8
    assert spec.unet_config["transformer_layers_per_block"] == 2
    assert [te.layout for te in spec.text_encoders] == ["clip", "openclip"]
    assert spec.text_encoders[1].with_projection


def test_inpainting_checkpoint_has_nine_input_channels(models_dir):
    spec = _spec(models_dir, "sd1-inpainting.safetensors")
    assert spec.family is Family.SD1 and spec.is_inpainting


def test_pickle_checkpoint_reads_the_same_tensors(models_dir):
    a = read_state_dict(models_dir / "Stable-diffusion" / "sd1.safetensors")
    b = read_state_dict(models_dir / "Stable-diffusion" / "sd1-pickle.ckpt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_shallow_prefix_is_normalized(models_dir, tmp_path):
    sd = read_state_dict(models_dir / "Stable-diffusion" / "sd1.safetensors")
    shallow = tmp_path / "shallow.safetensors"
    save_file({k.removeprefix("model."): v for k, v in sd.items()}, str(shallow))
    assert SingleFileModel(shallow).spec.family is Family.SD1
