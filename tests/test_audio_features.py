"""core.audio_features: Ditto's chunking (exact parity with the official code through a stand-in
encoder), the streaming variant, the HuBERT loader, the spec check and the audio front end.

``fixtures/ditto/w2f.safetensors`` = the ``w2f.*`` tensors of ``shared/reference/ditto/io.safetensors``:
the official ``Wav2FeatHubert`` / online loop run with a stand-in HuBERT whose output is
``out[j, c] = chunk[320 j + (c % 400)]`` (j < 20), so every feature value names the audio samples
it came from.
"""
import math
import random
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import tolerance as tol
from conftest import FIXTURES
from core import audio as A
from core import audio_features as AF
from core import weights as W
from core.audio_features import ditto as D
from core.audio_features import encoders as E
from core.cache import CACHE
from core.errors import Cancelled, CheckpointError, InputError, WeightsMissingError
from core.host import HOST

W2F = load_file(str(FIXTURES / "ditto" / "w2f.safetensors"))


class StandIn:
    """The fixtures' stand-in HuBERT: 20 frames, channel c of frame j = chunk[320 j + c]."""

    name = "stand-in"
    dim = 400
    sample_rate = 16000
    layer = "last_hidden_state"

    def __init__(self):
        self.calls = []
        self.index = 320 * torch.arange(20)[:, None] + torch.arange(400)[None] % 400

    def __call__(self, chunks):
        assert chunks.ndim == 2 and chunks.shape[1] == D.CHUNK_SAMPLES and chunks.dtype == torch.float32
        self.calls.append(chunks.shape[0])
        return chunks[:, self.index]


def fixture_audio():
    return W2F["w2f.audio"].float()


# --------------------------------------------------------------------------- chunking parity
def test_offline_chunking_matches_official():
    audio = fixture_audio()
    starts = D.offline_chunk_starts(audio.numel())
    assert starts == W2F["w2f.offline.chunk_start"].tolist()
    assert len(starts) == int(W2F["w2f.offline.num_chunks"])
    feats = D.ditto_offline_features(audio, StandIn())
    want = W2F["w2f.offline.feat400"]
    assert feats.shape == want.shape == (D.num_video_frames(audio.numel()), 400) == (35, 400)
    torch.testing.assert_close(feats, want, rtol=0, atol=0)


def test_online_chunking_matches_official():
    audio = fixture_audio()
    starts = D.online_chunk_starts(audio.numel())
    assert starts == W2F["w2f.online.chunk_start"].tolist()
    assert len(starts) == int(W2F["w2f.online.num_chunks"]) == D.online_num_chunks(audio.numel())
    feats = D.ditto_online_features(audio, StandIn())
    torch.testing.assert_close(feats, W2F["w2f.online.feat400"], rtol=0, atol=0)
    assert feats.shape == (40, 400)
    # online = offline shifted by 80 samples: chunk k starts 80 samples later
    off = D.offline_chunk_starts(audio.numel())
    assert all(b - a == 80 for a, b in zip(off, starts))


def test_batching_does_not_change_features_and_reports_progress(monkeypatch):
    audio = torch.randn(16000 * 3 + 123, generator=torch.Generator().manual_seed(1))
    enc = StandIn()
    calls = []
    one = D.ditto_offline_features(audio, enc, batch_size=1)
    assert set(enc.calls) == {1}
    enc.calls.clear()
    many = D.ditto_offline_features(audio, enc, batch_size=4, progress=lambda d, t: calls.append((d, t)))
    assert max(enc.calls) == 4 and sum(enc.calls) == len(D.offline_chunk_starts(audio.numel()))
    assert torch.equal(one, many)
    assert calls[-1][0] == calls[-1][1] == sum(enc.calls) and len(calls) == len(enc.calls)
    # cancelling goes through core.progress.Progress: the host's interrupt stops it after a batch
    enc.calls.clear()

    def interrupt():
        raise Cancelled("interrupted")

    monkeypatch.setattr(HOST, "check_interrupt", interrupt)
    with pytest.raises(Cancelled, match="interrupted"):
        D.ditto_offline_features(audio, enc, batch_size=2)
    assert enc.calls == [2]


@pytest.mark.parametrize("n", [0, 1, 639, 640, 641, 4480, 3200 * 7 - 1920, 21920])
def test_frame_counts(n):
    assert D.num_video_frames(n) == math.ceil(n * 25 / 16000 - 1e-12) == -(-n // 640)
    audio = torch.randn(n, generator=torch.Generator().manual_seed(n))
    assert D.ditto_offline_features(audio, StandIn()).shape[0] == D.num_video_frames(n)
    online = D.ditto_online_features(audio, StandIn())
    assert online.shape[0] == 5 * math.ceil((n + 1920) / 3200) >= D.num_video_frames(n)


def test_streaming_push_matches_one_shot_online():
    audio = fixture_audio()
    audio = torch.cat([audio, torch.randn(9000, generator=torch.Generator().manual_seed(3)) * 0.1])
    want = D.ditto_online_features(audio, StandIn())
    rng = random.Random(0)
    for trial in range(4):
        stream = D.DittoOnlineFeatures(StandIn(), batch_size=rng.choice([1, 2, 16]))
        got, pos = [], 0
        while pos < audio.numel():
            size = rng.choice([0, 1, 7, 640, 3199, 3200, 6480, 10000])
            piece = audio[pos:pos + size]
            pos += piece.numel()
            rows = stream.push(piece.numpy() if trial % 2 else piece)
            got.append(rows)
            # a chunk's rows come out as soon as its 6480 samples are there, never earlier
            ready = sum(1 for k in range(D.online_num_chunks(pos)) if 3200 * k + 6480 <= pos + 1920)
            assert stream.rows_emitted == 5 * ready
            assert stream._buf.numel() <= 6480 + 10000  # only what the next chunk needs is kept
        got.append(stream.flush())
        got = torch.cat([g for g in got if g.numel()])
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert not got.is_inference() and not want.is_inference()  # callers may edit them in place
        assert stream.num_frames == D.num_video_frames(audio.numel())
        assert stream.flush().numel() == 0
        with pytest.raises(RuntimeError):
            stream.push(audio[:10])


# --------------------------------------------------------------------------- tiny HuBERT
def tiny_config(**kw):
    from transformers import HubertConfig

    cfg = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, conv_dim=(8,) * 7,
               num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, do_stable_layer_norm=True,
               feat_extract_norm="layer", conv_bias=True, vocab_size=12)
    cfg.update(kw)
    return HubertConfig(**cfg)


@pytest.fixture(scope="module")
def tiny_ctc():
    from transformers import HubertForCTC

    torch.manual_seed(0)
    model = HubertForCTC(tiny_config()).eval()
    with torch.no_grad():  # make the (normally zero-initialised) biases/LN parameters matter too
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture
def no_cache():
    yield
    CACHE.unload(E.CACHE_FAMILY)


def save_legacy_bin(model, folder):
    """HubertForCTC weights as an old transformers checkpoint: pytorch_model.bin with weight_g/weight_v."""
    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(str(folder / "config.json"))
    state = {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                                   "weight_v"): v.clone()
             for k, v in model.state_dict().items()}
    assert any(k.endswith("weight_g") for k in state) and "lm_head.weight" in state
    torch.save(state, folder / "pytorch_model.bin")


def test_hubert_loads_from_hf_folders_and_matches_transformers(tmp_path, tiny_ctc, no_cache):
    st_folder = tmp_path / "hf"
    tiny_ctc.save_pretrained(str(st_folder))  # config.json + model.safetensors, "hubert." keys + lm_head
    bin_folder = tmp_path / "legacy"
    save_legacy_bin(tiny_ctc, bin_folder)
    chunks = 0.3 * torch.randn(3, 6480, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = tiny_ctc.hubert(chunks, output_hidden_states=True)
    for path in (st_folder, bin_folder, bin_folder / "pytorch_model.bin"):
        enc = AF.get_encoder("hubert-large-ls960-ft", device="cpu", precision="fp32", path=path)
        assert enc.dim == 16 and not enc.model.training
        tol.close_network(enc(chunks), ref.last_hidden_state, tol.HUBERT_TINY)
        for layer, want in (("hidden_states[0]", ref.hidden_states[0]), (1, ref.hidden_states[1])):
            mid = AF.get_encoder("hubert-large-ls960-ft", device="cpu", precision="fp32", path=path, layer=layer)
            assert mid.model is enc.model  # one cached model whatever the layer
            tol.close_network(mid(chunks), want, tol.HUBERT_TINY, what=str(layer))
        # the last layer's residual stream, before the final LayerNorm (same in transformers 4 and 5)
        last = AF.get_encoder("hubert-large-ls960-ft", device="cpu", precision="fp32", path=path,
                              layer="hidden_states[-1]")
        assert last.layer == "hidden_states[2]"
        with torch.no_grad():
            tol.close_network(tiny_ctc.hubert.encoder.layer_norm(last(chunks)), ref.last_hidden_state, tol.HUBERT_TINY)
    with pytest.raises(InputError, match="hidden_states"):
        AF.get_encoder("hubert-large-ls960-ft", device="cpu", path=st_folder, layer="hidden_states[7]")
    with pytest.raises(InputError, match="layer"):
        AF.get_encoder("hubert-large-ls960-ft", device="cpu", path=st_folder, layer="attention")


def test_compute_embeddings_end_to_end_with_tiny_hubert(tmp_path, tiny_ctc, no_cache):
    folder = tmp_path / "hf"
    tiny_ctc.save_pretrained(str(folder))
    sr, seconds = 16000, 1.37
    t = torch.arange(int(seconds * sr)) / sr
    wave = 0.4 * torch.sin(2 * math.pi * 220 * t) * (1 + torch.sin(2 * math.pi * 3 * t))
    emb = AF.compute_embeddings({"waveform": wave[None, None], "sample_rate": sr}, model_path=folder, device="cpu",
                                precision="fp32", batch_size=3)
    n = math.ceil(wave.numel() / sr * 25)
    assert emb.num_frames == n and emb.features.shape == (n, 16) and emb.features.dtype == torch.float32
    assert emb.spec == {"encoder": "hubert-large-ls960-ft", "layer": "last_hidden_state", "chunking": "ditto-offline",
                        "dim": 16, "sample_rate": 16000}
    assert emb.envelope.shape == (n,) and float(emb.envelope.max()) <= 1
    assert emb.audio_samples == wave.numel() and abs(emb.seconds - wave.numel() / sr) < 1e-9
    with torch.no_grad():
        chunks = D.gather_chunks(wave, D.offline_chunk_starts(wave.numel()))
        want = D.reduce_chunk_output(tiny_ctc.hubert(chunks).last_hidden_state)[:n]
    tol.close_network(emb.features, want, tol.HUBERT_TINY_PAIRS)
    AF.check_spec(emb, {**AF.DITTO_EXPECTED, "dim": 16}, "Ditto")
    online = AF.compute_embeddings(wave, chunking="ditto-online", model_path=folder, device="cpu", precision="fp32")
    assert online.spec["chunking"] == "ditto-online" and online.num_frames == n
    assert online.features.shape[0] == 5 * math.ceil((wave.numel() + 1920) / 3200) and online.aligned().shape[0] == n


def test_bad_hubert_files(tmp_path, tiny_ctc, no_cache):
    folder = tmp_path / "hf"
    tiny_ctc.save_pretrained(str(folder))
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text((folder / "config.json").read_text())
    state = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if "layers.1." not in k}
    save_file(state, str(other / "model.safetensors"))
    with pytest.raises(CheckpointError, match="Missing keys"):
        AF.get_encoder("hubert-large-ls960-ft", device="cpu", path=other)
    (other / "config.json").write_text('{"model_type": "wav2vec2"}')
    with pytest.raises(CheckpointError, match="not 'hubert'"):
        AF.get_encoder("hubert-large-ls960-ft", device="cpu", path=other)
    with pytest.raises(WeightsMissingError, match="config.json"):
        AF.get_encoder("hubert-large-ls960-ft", device="cpu", path=tmp_path / "empty")


# --------------------------------------------------------------------------- weights and dependencies
@pytest.fixture
def isolated(isolated_weights, monkeypatch):
    """The weights manager's folders under tmp_path only, offline."""
    monkeypatch.setenv("TALKINGHEAD_OFFLINE", "1")
    return isolated_weights


def test_missing_hubert_names_folder_source_and_licence(isolated):
    with pytest.raises(WeightsMissingError) as err:
        AF.compute_embeddings(torch.randn(16000) * 0.1, device="cpu")
    msg = str(err.value)
    folder = str(isolated / "models" / "audio_encoders" / "hubert-large-ls960-ft")
    assert folder in msg and "config.json" in msg and "pytorch_model.bin" in msg and "model.safetensors" in msg
    assert "https://huggingface.co/facebook/hubert-large-ls960-ft" in msg and "Apache-2.0" in msg
    assert "Offline" in msg


def test_manifest_entries():
    cfg, wts = W.model_file(E.HUBERT_CONFIG_ID), W.model_file(E.HUBERT_WEIGHTS_ID)
    assert cfg.folder == wts.folder == "audio_encoders" and cfg.filename == "hubert-large-ls960-ft/config.json"
    assert list(wts.names[:2]) == ["hubert-large-ls960-ft/pytorch_model.bin", "hubert-large-ls960-ft/model.safetensors"]
    assert wts.source["hf_repo"] == cfg.source["hf_repo"] == "facebook/hubert-large-ls960-ft"
    onnx = W.model_file(E.DITTO_ONNX_ID)
    # UnloadModels offers manifest families; the cache must use the same name for the encoders
    assert cfg.family == wts.family == onnx.family == E.CACHE_FAMILY
    assert onnx.source["hf_path"] == "ditto_pytorch/aux_models/hubert_streaming_fix_kv.onnx"
    assert onnx.source["hf_repo"] == "digital-avatar/ditto-talkinghead" and onnx.license == "Apache-2.0"


def test_onnx_encoder_without_onnxruntime_says_what_to_do(isolated, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(E.MissingDependencyError) as err:
        AF.compute_embeddings(torch.randn(16000) * 0.1, encoder="ditto-onnx", device="cpu")
    msg = str(err.value)
    assert "pip install onnxruntime" in msg and "hubert-large-ls960-ft" in msg


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_onnx_encoder_matches_pytorch_hubert(tmp_path, tiny_ctc, no_cache):
    """A HuBERT exported like Ditto's file ((1, 6480) -> (20, D)) gives the PyTorch path's features."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")

    class Chunk(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hubert = tiny_ctc.hubert

        def forward(self, x):
            return self.hubert(x).last_hidden_state[0]

    path = tmp_path / "hubert_streaming_fix_kv.onnx"
    torch.onnx.export(Chunk().eval(), (torch.zeros(1, 6480),), str(path), input_names=["input_values"],
                      output_names=["encoding_out"], dynamo=False)
    assert not tiny_ctc.training
    folder = tmp_path / "hf"
    tiny_ctc.save_pretrained(str(folder))
    wave = 0.3 * torch.randn(16000, generator=torch.Generator().manual_seed(9))
    onnx = AF.compute_embeddings(wave, encoder="ditto-onnx", model_path=path, device="cpu", batch_size=4)
    torch_ = AF.compute_embeddings(wave, model_path=folder, device="cpu", precision="fp32")
    assert onnx.spec["encoder"] == "ditto-onnx" and onnx.spec["layer"] == "onnx-output" and onnx.dim == 16
    tol.close_network(onnx.features, torch_.features, tol.HUBERT_TINY_PAIRS)  # onnxruntime's kernels vs torch's
    AF.check_spec(onnx, {**AF.DITTO_EXPECTED, "dim": 16}, "Ditto")
    with pytest.raises(InputError, match="fixed output"):
        AF.get_encoder("ditto-onnx", device="cpu", path=path, layer="hidden_states[3]")


# --------------------------------------------------------------------------- spec check
def test_spec_mismatch_names_given_needed_and_setting():
    emb = AF.AudioEmbeddings(torch.zeros(10, 768), spec={"encoder": "joyvasa-hubert", "layer": "last_hidden_state",
                                                          "chunking": "joyvasa", "sample_rate": 16000})
    with pytest.raises(InputError) as err:
        AF.check_spec(emb, AF.DITTO_EXPECTED, "Ditto")
    msg = str(err.value)
    assert "'joyvasa-hubert'" in msg and "'hubert-large-ls960-ft'" in msg and "'ditto-offline'" in msg
    assert "dim: given 768" in msg and "1024" in msg
    assert "In AudioToEmbedding set encoder = " in msg and "chunking = " in msg and "Ditto" in msg
    ok = AF.AudioEmbeddings(torch.zeros(10, 1024), spec={"encoder": "ditto-onnx", "layer": "onnx-output",
                                                         "chunking": "ditto-online", "sample_rate": 16000})
    assert AF.check_spec(ok, AF.DITTO_EXPECTED, "Ditto") is ok
    with pytest.raises(InputError, match="layer: given 'hidden_states\\[12\\]'"):
        AF.check_spec(AF.AudioEmbeddings(torch.zeros(3, 1024), spec={**ok.spec, "layer": "hidden_states[12]"}),
                      AF.DITTO_EXPECTED, "Ditto")
    with pytest.raises(InputError, match="AudioToEmbedding"):
        AF.check_spec(torch.zeros(3, 1024), AF.DITTO_EXPECTED, "Ditto")


def test_embeddings_container_checks():
    with pytest.raises(InputError):
        AF.AudioEmbeddings(torch.zeros(10))
    with pytest.raises(InputError):
        AF.AudioEmbeddings(torch.zeros(10, 4), num_frames=11)
    with pytest.raises(InputError):
        AF.AudioEmbeddings(torch.zeros(10, 4), envelope=torch.zeros(9))
    with pytest.raises(InputError):
        AF.AudioEmbeddings(torch.zeros(10, 4), spec={"dim": 5})
    e = AF.AudioEmbeddings(torch.ones(12, 4, dtype=torch.float16), spec={"encoder": "x"}, num_frames=10,
                           envelope=torch.ones(10))
    assert e.features.dtype == torch.float32 and e.dim == 4 and e.aligned().shape == (10, 4)
    again = AF.AudioEmbeddings.from_state(e.to_state())
    assert torch.equal(again.features, e.features) and again.spec == e.spec and again.num_frames == 10


# --------------------------------------------------------------------------- audio front end
def test_resamples_44k_stereo_like_core_audio():
    sr = 44100
    t = torch.arange(int(1.3 * sr)) / sr
    left, right = 0.5 * torch.sin(2 * math.pi * 300 * t), 0.2 * torch.sin(2 * math.pi * 1250 * t)
    stereo = A.Audio(torch.stack([left, right]), sr)
    emb = AF.compute_embeddings(A.to_comfy(stereo), encoder=StandIn())
    mono16 = A.resample(A.to_mono(stereo), 16000)
    n = math.ceil(1.3 * 25)
    assert emb.num_frames == n == D.num_video_frames(mono16.num_samples) and emb.features.shape == (n, 400)
    torch.testing.assert_close(emb.features, D.ditto_offline_features(mono16.waveform[0], StandIn()), rtol=0, atol=0)
    # the resampled signal still carries the tone (soxr, not a naive decimation)
    assert abs(float(mono16.waveform.std()) - float(A.to_mono(stereo).waveform.std())) < 0.01
    assert emb.spec["encoder"] == "stand-in" and emb.spec["sample_rate"] == 16000
    assert emb.envelope.shape == (n,)


def test_audio_errors():
    with pytest.raises(InputError, match="empty"):
        AF.compute_embeddings(torch.zeros(0), encoder=StandIn())
    with pytest.raises(InputError, match="empty"):
        AF.compute_embeddings({"waveform": torch.zeros(1, 2, 0), "sample_rate": 44100}, encoder=StandIn())
    with pytest.raises(InputError, match="silent"):
        AF.compute_embeddings(torch.zeros(16000), encoder=StandIn())
    emb = AF.compute_embeddings(torch.zeros(16000), encoder=StandIn(), allow_silent=True)
    assert emb.num_frames == 25 and float(emb.envelope.abs().max()) == 0
    with pytest.raises(InputError, match="minutes"):
        AF.compute_embeddings(torch.randn(16000 * 7) * 0.1, encoder=StandIn(), max_minutes=0.1)
    with pytest.raises(InputError, match="unknown audio chunking"):
        AF.compute_embeddings(torch.randn(1600), encoder=StandIn(), chunking="nope")
    with pytest.raises(InputError, match="unknown audio encoder"):
        AF.compute_embeddings(torch.randn(1600), encoder="nope")
    with pytest.raises(InputError, match="does not take"):
        AF.get_encoder("hubert-large-ls960-ft", device="cpu", foo=1)


# --------------------------------------------------------------------------- registries
def test_registries_take_new_encoders_and_chunkings(monkeypatch):
    monkeypatch.setattr(E, "ENCODERS", dict(E.ENCODERS))
    monkeypatch.setattr(E, "CHUNKINGS", dict(E.CHUNKINGS))

    def whole(samples, encoder, batch_size=16, progress=None):
        frames = D.num_video_frames(samples.numel())
        return encoder(samples[None])[0][:frames], frames

    class Mean:
        name, dim, sample_rate, layer = "toy", 3, 16000, "last_hidden_state"

        def __call__(self, x):
            return x.reshape(x.shape[0], -1, 640).mean(-1, keepdim=True).repeat(1, 1, 3)

    E.register_encoder(E.EncoderInfo("toy", lambda dev, dtype, **kw: Mean(), 3, options=("layer", "download")))
    E.register_chunking(E.ChunkingInfo("whole", whole, extra={"window": "all"}))
    with pytest.raises(ValueError, match="already registered"):
        E.register_chunking(E.ChunkingInfo("whole", whole))
    emb = AF.compute_embeddings(torch.randn(640 * 30) * 0.1, encoder="toy", chunking="whole", device="cpu")
    assert emb.features.shape == (30, 3) and emb.num_frames == 30
    assert emb.spec == {"encoder": "toy", "layer": "last_hidden_state", "chunking": "whole", "dim": 3,
                        "sample_rate": 16000, "window": "all"}
    assert "toy" in E.list_encoders() and "whole" in E.list_chunkings()
