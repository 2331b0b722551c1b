"""core.configs: the families' shipped presets through one loader; the typed sizes of the models."""
import json

import pytest
import torch

from conftest import ROOT
from core import fom as F
from core import liveportrait as LP
from core.configs import config_dir, list_presets, load_preset
from core.errors import CheckpointError
from core.liveportrait.load import LivePortraitConfig, LivePortraitModels
from core.motion.joyvasa.model import hubert_base_config


def test_each_family_reads_its_configs_folder():
    for package, names in (("liveportrait", {"liveportrait", "tiny"}), ("fom", {"vox-256"})):
        folder = ROOT / "core" / package
        assert config_dir(folder / "load.py") == config_dir(folder) == folder / "configs"
        assert names <= set(list_presets(folder))
        for name in names:
            shipped = json.loads((folder / "configs" / f"{name}.json").read_text())
            assert load_preset(folder / "load.py", name) == shipped
    # the families' thin names are the same loader
    assert LP.preset("tiny") == load_preset(ROOT / "core" / "liveportrait", "tiny")
    assert F.preset() == load_preset(ROOT / "core" / "fom", "vox-256")
    a = LP.preset()
    a["model_params"] = None  # every call is a fresh dict
    assert LP.preset()["model_params"] is not None
    assert hubert_base_config()["hidden_size"] > 0


def test_unknown_preset_names_the_shipped_ones():
    with pytest.raises(ValueError, match=r"no shipped config 'vox-512'.*known: vox-256"):
        F.preset("vox-512")
    with pytest.raises(ValueError, match="liveportrait, .*tiny"):
        LP.preset("../fom/configs/vox-256")


def _models(config):
    nets = [torch.nn.Identity() for _ in range(5)]
    return LivePortraitModels(*nets, config=config)


def test_liveportrait_sizes_from_the_config():
    official, tiny = _models(LP.preset("liveportrait")), _models(LP.preset("tiny"))
    assert (official.input_size, official.output_size) == (LP.INPUT_SIZE, LP.OUTPUT_SIZE) == (256, 512)
    assert (tiny.input_size, tiny.output_size) == (64, 128)
    assert tiny.settings == LivePortraitConfig(LP.preset("tiny")["model_params"], 64, 128)
    assert tiny.settings.params("spade_generator") == LP.preset("tiny")["model_params"]["spade_generator_params"]
    assert (_models({}).input_size, _models({}).output_size) == (256, 512)
    with pytest.raises(CheckpointError, match="output_size must be a positive whole number"):
        _models({"output_size": 0}).output_size
    with pytest.raises(CheckpointError, match="no model_params.warping_module_params"):
        LivePortraitConfig.from_dict({"model_params": {}}).params("warping_module")


def test_fom_sizes():
    fom = F.FOM(torch.nn.Identity(), torch.nn.Identity(), F.preset())
    assert fom.input_size == fom.output_size == F.RESOLUTION == 256
