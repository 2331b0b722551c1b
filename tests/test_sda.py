"""Speech-Driven Animation (GRID) against the official code's outputs (tests/fixtures/sda, copied
from shared/reference/sda: official VideoAnimator run with tiny seeded weights and stub landmarks).

Case A: full path (alignment with given landmarks, 16 kHz int16 audio resampled to 50 kHz).
Case B: already-aligned face (resized only), audio at the model's 50 kHz.
Both model formats are checked: the official legacy pickle ``tiny-grid.dat`` and the flat
``weights.safetensors`` with the scalars from config.json.
"""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import tolerance as tol
from conftest import FIXTURES
from core import sda
from core.audio import Audio
from core.errors import CheckpointError, InputError

D = FIXTURES / "sda"
IO = load_file(str(D / "io.safetensors"))
CONFIG = json.loads((D / "config.json").read_text())
MANIFEST = json.loads((D / "checkpoint_manifest.json").read_text())
SCALARS = CONFIG["model_dict_scalars"]
FORMATS = ("dat", "safetensors")


# Tiny tensors: one torch thread is ~100x faster than two competing for a busy 2-core CPU.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models():
    return {"dat": sda.load_sda(D / "tiny-grid.dat"),
            "safetensors": sda.load_sda(D / "weights.safetensors", config=SCALARS)}


@pytest.fixture(scope="module", params=FORMATS)
def model(request, models):
    return models[request.param]


def case_inputs(case):
    kw = dict(fs=int(IO[f"{case}.fs"][0]), noise=IO[f"{case}.noise"])
    if case == "A":
        kw["landmarks"] = IO["A.landmarks"].numpy()
    else:
        kw["aligned"] = True
    return IO[f"{case}.image_u8"].numpy(), IO[f"{case}.audio_i16"].numpy(), kw


# --------------------------------------------------------------------------- structure
def test_architecture_derived_from_scalars():
    cfg = sda.SDAConfig.from_dict(SCALARS)
    assert cfg.derived() == CONFIG["derived"]
    assert [cfg.cutting_stride, cfg.audio_seq_padding] == IO["A.cut_args"].tolist()


def _manifest_config(values):
    vals = dict(values)
    vals["audio_feat_samples"] = int(vals["audio_rate"] * vals["audio_feat_len"])
    return sda.SDAConfig.from_dict(vals)


def test_full_size_grid_keys_and_shapes_on_meta():
    model = sda.build_model(_manifest_config(MANIFEST["inferred_grid_values"]))  # meta device: no memory
    for name, info in MANIFEST["modules"].items():
        module = getattr(model, name)
        state = module.state_dict()
        assert list(state) == list(info["state_dict"]), name
        for key, spec in info["state_dict"].items():
            assert list(state[key].shape) == spec["shape"], key
            assert str(state[key].dtype) == "torch." + spec["dtype"], key
        assert sum(p.numel() for p in module.parameters()) == info["num_parameters"], name
    for variant, spec in MANIFEST["variants"].items():
        values = dict(MANIFEST["inferred_grid_values"])
        for item in variant.split(","):
            k, v = item.split("=")
            values[k] = v == "True" if v in ("True", "False") else int(v)
        cfg = _manifest_config(values)
        m = sda.build_model(cfg)
        assert list(m.encoder.encoder.cl[0].weight.shape) == spec["encoder_cl0_weight_shape"], variant
        assert cfg.audio_kernels_strides() == (spec["audio_encoder_kernels"], spec["audio_encoder_strides"]), variant
        assert (m.generator.rnn_noise is not None) == spec["generator_has_rnn_noise"], variant


def test_both_formats_load_the_same(models, tmp_path):
    a, b = models["dat"], models["safetensors"]
    assert a.config == b.config and np.array_equal(a.mean_face, b.mean_face)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    # the twin written by convert_to_safetensors carries the scalars itself
    twin = sda.convert_to_safetensors(D / "tiny-grid.dat", tmp_path / "grid.safetensors")
    c = sda.load_sda(twin)
    assert c.config == a.config and np.array_equal(c.mean_face, a.mean_face)
    assert all(torch.equal(v, c.state_dict()[k]) for k, v in sa.items())


# --------------------------------------------------------------------------- preprocessing
def test_alignment_and_frame_transform(models):
    m = models["dat"]
    aligned = sda.align_face(IO["A.image_u8"].numpy(), IO["A.landmarks"].numpy(), m.mean_face, m.config.img_size)
    assert aligned.dtype == np.uint8
    tol.close_uint8(aligned, IO["A.aligned_u8"])
    # uint8 -> (x / 255 - 0.5) / 0.5: three roundings on values in -1..1
    tol.close_elementwise(sda.frame_tensor(IO["A.aligned_u8"].numpy(), m.config.img_size), IO["A.frame"], ops=3)
    # PIL bilinear 20x15 -> 16x12 (in uint8, exact), then the same three roundings
    tol.close_elementwise(sda.frame_tensor(IO["B.image_u8"].numpy(), m.config.img_size), IO["B.frame"], ops=3)
    # a float IMAGE batch [1, H, W, 3] in 0..1 is the same picture
    as_image = IO["B.image_u8"].float()[None] / 255
    tol.close_elementwise(sda.frame_tensor(as_image, m.config.img_size), IO["B.frame"], ops=3)


def test_speech_resample_scale_and_windows():
    cfg = sda.SDAConfig.from_dict(SCALARS)
    # float64 resampling (scipy) and scaling, one rounding to float32 at the end
    speech_a = sda.speech_from_audio(IO["A.audio_i16"].numpy(), cfg.audio_rate, fs=16000)
    tol.close_elementwise(speech_a, IO["A.speech"][:, 0], ops=1)
    speech_b = sda.speech_from_audio(IO["B.audio_i16"].numpy(), cfg.audio_rate, fs=50000)
    tol.close_elementwise(speech_b, IO["B.speech"][:, 0], ops=1)
    assert np.array_equal(sda.returned_audio(IO["A.speech"]), IO["A.returned_audio"].numpy())
    assert np.array_equal(sda.returned_audio(IO["B.speech"]), IO["B.returned_audio"].numpy())
    # float audio (core.audio.Audio, -1..1) is read as the int16 file: same speech
    as_float = Audio(IO["A.audio_i16"].float()[None] / 32768.0, 16000)
    tol.close_elementwise(sda.speech_from_audio(as_float, cfg.audio_rate), IO["A.speech"][:, 0], ops=1)
    windows = sda.audio_windows(IO["A.speech"][:, 0], cfg)
    assert windows.shape[0] == sda.num_frames(IO["A.speech"].shape[0], cfg) == IO["A.z"].shape[1]
    assert torch.equal(windows, IO["A.audio_feat_seq"][0, :, :, 0])
    assert windows.untyped_storage().nbytes() < 2 * (IO["A.speech"].numel() + cfg.audio_seq_padding) * 4  # a view
    with pytest.raises(InputError, match="too short"):
        sda.audio_windows(torch.zeros(cfg.cutting_stride - 1), cfg)


def test_fft_resample_is_scipys():
    """The lean FFT resampler does scipy.signal.resample's operations on the same numbers: equal with the scipy of
    this machine's newest install (which scales the spectrum before the inverse FFT), and within float64 rounding
    of older ones (which scale the result after it): one multiplication by num / n apart, a few ulps of the
    signal's peak."""
    import scipy
    from scipy import signal

    rng = np.random.default_rng(0)
    for n, num in ((16000, 50000), (16001, 50003), (44100, 50000), (96001, 49999), (48000, 50000), (7, 20)):
        x = rng.standard_normal(n)
        got, want = sda.preprocess.fft_resample(x.copy(), num), signal.resample(x, num)
        assert got.dtype == want.dtype == np.float64 and got.shape == want.shape
        assert np.max(np.abs(got - want)) <= 64 * np.finfo(np.float64).eps * np.max(np.abs(want)), (n, num)
        if tuple(int(v) for v in scipy.__version__.split(".")[:2]) >= (1, 17):
            assert np.array_equal(got, want), (n, num)


def test_long_speech_is_resampled_block_by_block_like_the_fft():
    """Past EXACT_RESAMPLE_SECONDS the speech goes through soxr block by block (memory: the result plus a block).
    Below 0.8 x Nyquist it is the FFT's signal within soxr VHQ's passband ripple (0.01 dB = 1.2e-3 of the
    amplitude); at the two ends the FFT wraps around, so those are left out of the comparison."""
    cfg = sda.SDAConfig.from_dict(SCALARS)
    rate, seconds = 16000, sda.preprocess.EXACT_RESAMPLE_SECONDS + 5
    t = np.arange(rate * seconds) / rate
    rng = np.random.default_rng(1)
    x = sum(rng.uniform(0.01, 0.04) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6))
            for f in rng.uniform(80, 0.8 * rate / 2, 24))
    got = sda.speech_from_audio(x.astype(np.float32), cfg.audio_rate, fs=rate).numpy()
    num = int(x.shape[0] * cfg.audio_rate / rate)
    want = sda.preprocess.fft_resample(x.astype(np.float32).astype(np.float64) * 32768, num) / 32767
    assert got.dtype == np.float32 and got.shape == want.shape
    inner = slice(cfg.audio_rate, -cfg.audio_rate)
    err = np.sqrt(np.mean((got[inner] - want[inner]) ** 2) / np.mean(want[inner] ** 2))
    assert err < 1.2e-3, err


# --------------------------------------------------------------------------- networks, stage by stage
def test_case_a_stages(model):
    cfg = model.config
    T = IO["A.z"].shape[1]
    with torch.inference_mode():
        windows = IO["A.audio_feat_seq"][0, :, :, 0]
        conv_only = tol.Net("SDA audio CNN", 6, tol.SDA_AUDIO.widest)
        tol.close_network(model.encoder.encode_windows(windows), IO["A.audio_frame_enc"], conv_only)
        z, _ = model.encoder(windows[None])
        tol.close_network(z, IO["A.z"], tol.SDA_AUDIO)
        z_id, skips = model.encoder_id(IO["A.frame"])
        tol.close_network(z_id, IO["A.z_id"], tol.SDA_ID)
        tol.close_network(skips[0], IO["A.id_skip.0"], tol.Net("SDA identity conv 0", 1, 48))
        tol.close_network(skips[1], IO["A.id_skip.1"], tol.Net("SDA identity convs 0-1", 2, 1024))
        gru, _ = model.generator.rnn_noise(IO["A.noise"])
        tol.close_network(gru, IO["A.noise_gru"], tol.Net("SDA noise GRU (4 + 4 in)", 1, 8))
        aux, _ = model.generator.noise_codes(IO["A.noise"])
        c = z_id[:, None, :].expand(1, T, -1)
        tol.close_network(c, IO["A.gen_c"], tol.SDA_ID)
        latent = torch.cat([z, aux, c], dim=2)
        assert latent.shape[2] == cfg.total_latent_size
        tol.close_network(model.generator.dcl[0](latent.reshape(-1, cfg.total_latent_size, 1, 1)), IO["A.gen_dcl0"],
                          tol.SDA_AUDIO.then(tol.Net("SDA generator dcl.0", 1, 528)))
        tol.close_network(model.generator.decode(latent[0], skips[::-1]), IO["A.gen_out"], tol.SDA)


@pytest.mark.parametrize("case", ["A", "B"])
def test_animate_matches_official(model, case):
    image, audio, kw = case_inputs(case)
    ref = sda.animate(model, image, audio, output="reference", **kw)
    # the official video is 125 * (generator output + 1) on a 0..250 scale: the magnitude is 250, not 1
    tol.close_network(ref.frames.permute(0, 3, 1, 2), IO[f"{case}.video"], tol.SDA)
    tol.close_network(ref.reference_video(), IO[f"{case}.video"], tol.SDA)
    assert np.array_equal(ref.audio_i16, IO[f"{case}.returned_audio"].numpy())
    tol.close_elementwise(ref.inputs.speech, IO[f"{case}.speech"][:, 0], ops=1)
    tol.close_elementwise(ref.inputs.frame, IO[f"{case}.frame"], ops=3)
    if case == "A":
        tol.close_uint8(ref.inputs.face, IO["A.aligned_u8"])
    raw = sda.animate(model, image, audio, output="raw", chunk_frames=2, **kw)
    tol.close_network(raw.frames.permute(0, 3, 1, 2), IO[f"{case}.gen_out"], tol.SDA)
    unit = sda.animate(model, image, audio, **kw)  # default "unit": the official video / 255
    tol.close_elementwise(unit.frames * 255, ref.frames, ops=2)  # / 255 and * 255 on values up to 250
    assert unit.fps == 25 and unit.audio.sample_rate == 50000 and unit.frames.shape[1:] == (16, 12, 3)
    # at most 250 / 255, up to the two roundings of 125 x + 125 and / 255
    assert float(unit.frames.max()) <= 250 / 255 + tol.elementwise_bound(2, 1.0) and float(unit.frames.min()) >= 0


def test_case_b_codes(model):
    with torch.inference_mode():
        windows = sda.audio_windows(IO["B.speech"][:, 0], model.config)
        tol.close_network(model.encoder(windows[None])[0], IO["B.z"], tol.SDA_AUDIO)
        tol.close_network(model.encoder_id(IO["B.frame"])[0], IO["B.z_id"], tol.SDA_ID)


# --------------------------------------------------------------------------- chunking and noise
def test_chunked_generation_equals_one_pass(models):
    model = models["dat"]
    image, _, kw = case_inputs("A")
    kw.pop("noise"), kw.pop("fs")
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(16000 * 2 // 5) * 3000).astype(np.int16)  # 0.4 s -> 10 frames
    one = sda.animate(model, image, audio, fs=16000, seed=7, chunk_frames=10_000, output="raw", **kw)
    T = one.frames.shape[0]
    assert T == 10
    for chunk in (2, 3):
        stream = sda.animate_stream(model, image, audio, fs=16000, seed=7, chunk_frames=chunk, output="raw", **kw)
        assert len(stream) == -(-T // chunk) and stream.num_frames == T
        parts = list(stream)
        assert all(p.shape[0] <= chunk for p in parts)
        # float rounding only: torch's CPU GRU projects a whole chunk's inputs in one matmul, whose
        # blocking depends on the chunk length (1-ulp differences in z, ~1e-6 after the generator)
        tol.close_network(torch.cat(parts), one.frames, tol.SDA)
    # the noise is the reference's single (1, T, aux) draw from the seeded generator
    torch.manual_seed(7)
    official_draw = torch.FloatTensor(1, T, model.config.aux_latent).normal_(0, 0.33)
    assert torch.equal(one.inputs.noise, official_draw)
    assert torch.equal(sda.draw_noise(T, model.config.aux_latent, 7), official_draw)
    # the same explicit noise gives the same frames
    again = sda.animate(model, image, audio, fs=16000, noise=official_draw, chunk_frames=4, output="raw", **kw)
    tol.close_network(again.frames, one.frames, tol.SDA)


def test_frame_stream_equals_animate_on_every_pull(models):
    """sda.frame_stream: nothing is generated until it is pulled; each pull generates the clip anew, chunk by
    chunk, giving animate's frames bit for bit for the same seed and chunking. A model opener is entered once per
    pull (what the nodes use to load the model through the cache at pull time)."""
    model = models["dat"]
    image, _, kw = case_inputs("A")
    kw.pop("noise"), kw.pop("fs")
    rng = np.random.default_rng(2)
    audio = (rng.standard_normal(16000 * 2 // 5) * 3000).astype(np.int16)  # 0.4 s -> 10 frames
    whole = sda.animate(model, image, audio, fs=16000, seed=11, chunk_frames=4, **kw)
    inputs = sda.prepare(model, image, audio, fs=16000, seed=11, **kw)
    opened, steps = [], []

    class Opener:
        def __enter__(self):
            opened.append("enter")
            return model

        def __exit__(self, *exc):
            opened.append("exit")

    stream = sda.frame_stream(Opener, inputs, 4, config=model.config, label="test frames",
                              progress=lambda done, total: steps.append((done, total)))
    assert opened == [] and steps == []  # nothing runs before a pull
    assert (len(stream), stream.height, stream.width, stream.fps) == (10, *model.config.img_size, 25.0)
    first = [b.clone() for b in stream]
    assert [b.shape[0] for b in first] == [4, 4, 2] and opened == ["enter", "exit"]
    assert steps == [(4, 10), (8, 10), (10, 10)]
    assert torch.equal(torch.cat(first), whole.frames)
    assert torch.equal(stream.materialize(), whole.frames)  # pulled again: the same noise, the same frames
    assert opened == ["enter", "exit"] * 2
    # with the model itself; another seed gives other frames
    assert torch.equal(sda.frame_stream(model, inputs, 4).materialize(), whole.frames)
    other = sda.prepare(model, image, audio, fs=16000, seed=12, **kw)
    assert not torch.equal(sda.frame_stream(model, other, 4).materialize(), whole.frames)
    with pytest.raises(ValueError, match="config"):
        sda.frame_stream(Opener, inputs, 4)
    with pytest.raises(InputError, match="chunk_frames"):
        sda.frame_stream(model, inputs, 0)


# --------------------------------------------------------------------------- errors
def test_no_face_error_names_the_alternatives(models):
    image, audio, kw = case_inputs("A")
    kw.pop("landmarks")
    with pytest.raises(InputError) as err:
        sda.animate_stream(models["dat"], image, audio, landmark_fn=lambda img: None, **kw)
    msg = str(err.value)
    assert "No face" in msg and "already-aligned" in msg and "another image" in msg

    def raising(img):
        raise InputError("detector found nothing")
    with pytest.raises(InputError, match="already-aligned"):
        sda.animate(models["dat"], image, audio, landmark_fn=raising, **kw)
    # the landmark function receives the uint8 picture
    seen = []
    sda.prepare(models["dat"], image, audio, landmark_fn=lambda img: seen.append(img) or IO["A.landmarks"].numpy(),
                **kw)
    assert seen[0].dtype == np.uint8 and seen[0].shape == (40, 30, 3)


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    data = (D / "tiny-grid.dat").read_bytes()
    (tmp_path / "cut.dat").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.dat"):
        sda.load_sda(tmp_path / "cut.dat")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        sda.load_sda(tmp_path / "junk.safetensors")

    from core.weights import load_checkpoint
    good = load_checkpoint(D / "tiny-grid.dat")
    wrong = dict(good, generator=dict(good["generator"]))
    wrong["generator"]["dcl.0.0.weight"] = torch.zeros(40, 128, 4, 3)
    torch.save(wrong, tmp_path / "wrong.dat")
    with pytest.raises(CheckpointError, match="(?s)does not match.*dcl.0.0.weight"):
        sda.load_sda(tmp_path / "wrong.dat")
    other = dict(good, aux_latent=6)  # settings that do not fit the weights
    torch.save(other, tmp_path / "other.dat")
    with pytest.raises(CheckpointError, match="does not match"):
        sda.load_sda(tmp_path / "other.dat")
    missing = {k: v for k, v in good.items() if k != "img_size"}
    torch.save(missing, tmp_path / "missing.dat")
    with pytest.raises(CheckpointError, match="img_size"):
        sda.load_sda(tmp_path / "missing.dat")
    torch.save({"state_dict": {"w": torch.ones(1)}}, tmp_path / "notsda.dat")
    with pytest.raises(CheckpointError, match="not a speech-driven-animation"):
        sda.load_sda(tmp_path / "notsda.dat")
    # the plain safetensors fixture has no settings of its own
    with pytest.raises(CheckpointError, match="sda_config"):
        sda.load_sda(D / "weights.safetensors")
