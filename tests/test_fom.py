"""First Order Motion Model: parity with the official implementation's outputs (fixtures from
shared/reference/fom, copied to tests/fixtures/fom) from both checkpoint formats, loading
errors, batching/streaming invariances, and the FOMAnimate node."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import tolerance as tol
from conftest import FIXTURES, ROOT, mp4_facts, run_headless, sub
from core import fom as F
from core.errors import CheckpointError, InputError
from core.resize import resize_pad
from core.weights import load_state_dict

IO = load_file(str(FIXTURES / "fom" / "io.safetensors"))


@pytest.fixture(autouse=True)
def auto_means_fp32(monkeypatch):
    """These tests hold the official fp32 outputs: ``precision="auto"`` resolves to fp32 here, as on a CPU
    without native bf16, whatever this machine has (auto's bf16 choice: tests/test_device_cache.py; the
    half-precision bounds at full size: tests/test_half_precision.py)."""
    import core.device

    monkeypatch.setattr(core.device, "cpu_bf16_native", lambda: False)
FORMATS = ["tiny-cpk.pth.tar", "weights.safetensors"]


@pytest.fixture(scope="module", params=FORMATS)
def model(request):
    return F.load_fom(FIXTURES / "fom" / request.param)


def kp(prefix, n=None):
    out = {"value": IO[f"{prefix}.value"], "jacobian": IO[f"{prefix}.jacobian"]}
    return out if n is None else {k: v[n:n + 1] for k, v in out.items()}


def test_keypoints_and_jacobians(model):
    src = F.keypoints(model, IO["source"])
    drv = F.keypoints(model, IO["driving"])  # batched; the fixture ran frame by frame
    tol.close_network(src["value"], IO["kp_source.value"], tol.FOM_KP)
    tol.close_network(src["jacobian"], IO["kp_source.jacobian"], tol.FOM_KP)
    tol.close_network(drv["value"], IO["kp_driving.value"], tol.FOM_KP)
    tol.close_network(drv["jacobian"], IO["kp_driving.jacobian"], tol.FOM_KP)


def test_intermediates_of_the_keypoint_detector(model):
    det = model.kp_detector
    with torch.inference_mode():
        small = det.down(IO["source"])
        feats = det.predictor(small)
        logits = det.kp(feats)
    blur = tol.Net("FOM 13x13 anti-alias blur", 1, 169)
    tol.close_network(small, IO["kp_detector.down.source"], blur)
    hourglass = blur.then(tol.Net("FOM hourglass", 6, 576))
    tol.close_network(feats, IO["kp_detector.feature_map.source"], hourglass)
    tol.close_network(logits, IO["kp_detector.heatmap_logits.source"], hourglass.then(tol.Net("7x7 head", 1, 539)))


@pytest.mark.parametrize("adapt,key", [(True, "kp_norm.rel_adapt"), (False, "kp_norm.rel")])
def test_normalize_kp_both_modes(adapt, key):
    src, drv = kp("kp_source"), kp("kp_driving")
    out = F.normalize_kp(src, drv, kp("kp_driving", 0), adapt_movement_scale=adapt,
                         use_relative_movement=True, use_relative_jacobian=True)
    # value: kp_drv - kp_init (x scale) + kp_src, 3 roundings; jacobian: J_drv inv(J_init) J_src, 2x2 matrices
    # (determinant 3 roundings, 4 divisions, two 2-term products of 3 roundings each) on entries up to ~1.2
    tol.close_elementwise(out["value"], IO[f"{key}.value"], ops=3)
    tol.close_elementwise(out["jacobian"], IO[f"{key}.jacobian"], ops=10)
    assert F.movement_scale(src, kp("kp_driving", 0)) == pytest.approx(IO["adapt_movement_scale"].item(), rel=1e-6)
    absolute = F.normalize_kp(src, drv, kp("kp_driving", 0))  # absolute mode: unchanged
    assert absolute["value"] is drv["value"]


def test_generator_outputs(model):
    with torch.inference_mode():
        out = model.generator(IO["source"], kp("kp_norm.rel_adapt"), kp("kp_source"))
    for name in ("prediction", "mask", "occlusion_map", "deformation", "sparse_deformed", "deformed"):
        tol.close_network(out[name], IO[f"gen.{name}"], tol.FOM_GEN, what=name)
    with torch.inference_mode():
        motion = model.generator.dense_motion_network(model.generator.dense_motion_network.downsample(IO["source"]),
                                                      kp("kp_norm.rel_adapt"), kp("kp_source"))
        encoded = model.generator.encode(IO["source"])
        from core.fom.model import warp

        bottleneck_in = warp(encoded.expand(4, -1, -1, -1), motion["deformation"]) * motion["occlusion_map"]
    tol.close_network(encoded, IO["gen.encoded_source"], tol.Net("FOM source encoder: 3 convs, 7x7 x 3 ch", 3, 147))
    tol.close_network(bottleneck_in, IO["gen.bottleneck_in"], tol.FOM_GEN)


def test_encode_once_render_equals_official_forward(model):
    state = F.prepare_source(model, IO["source"])
    tol.close_network(F.render(model, state, kp("kp_norm.rel_adapt")), IO["gen.prediction"], tol.FOM_GEN)


def test_absolute_mode(model):
    with torch.inference_mode():
        pred = model.generator(IO["source"], kp("kp_driving", 1), kp("kp_source"))["prediction"]
    tol.close_network(pred, IO["gen_abs.prediction.frame1"], tol.FOM_GEN)
    out = F.animate(model, IO["source"].permute(0, 2, 3, 1), IO["driving"].permute(0, 2, 3, 1),
                    relative=False, resolution=64)
    tol.close_network(out[1:2].permute(0, 3, 1, 2), IO["gen_abs.prediction.frame1"], tol.FOM)


@pytest.mark.parametrize("batch_size", [1, 3, 4, 8])
def test_animate_whole_path_any_batch_size(model, batch_size):
    seen = []
    out = F.animate(model, IO["source"].permute(0, 2, 3, 1), IO["driving"].permute(0, 2, 3, 1),
                    batch_size=batch_size, resolution=64, progress=lambda d, t, p=None: seen.append((d, t)))
    tol.close_network(out.permute(0, 3, 1, 2), IO["gen.prediction"], tol.FOM)
    steps = -(-4 // batch_size)
    assert seen[-1] == (steps, steps) and len(seen) == steps


def test_find_best_frame_from_landmarks():
    src, drv = IO["find_best_frame.landmarks_source"].numpy(), IO["find_best_frame.landmarks_driving"].numpy()
    best = int(IO["find_best_frame.best_index"].item())
    assert F.find_best_frame(src, drv) == best
    # frames where no face was found are skipped
    with_gaps = [None if i == best else lm for i, lm in enumerate(drv)]
    assert F.find_best_frame(src, with_gaps) not in (best, None)
    assert F.find_best_frame(src, [None, None]) == 0


def test_best_frame_index_matches_the_portraits_landmarks(monkeypatch):
    """core.fom.best_frame_index: the S3FD detector and 2D-FAN (stubbed here; tested in test_face.py /
    test_landmarks.py) on the portrait's first image and every driving frame, matched by find_best_frame."""
    from core import face

    src_lm = IO["find_best_frame.landmarks_source"].numpy()
    drv_lm = list(IO["find_best_frame.landmarks_driving"].numpy()[:4])
    portrait, driving = torch.rand(2, 6, 5, 3), torch.rand(4, 6, 5, 3)
    loaded, runs = [], []

    def landmarks(images, det, fan, progress=None):
        assert (det, fan) == ("s3fd", "fan")
        runs.append((images, progress))
        return [src_lm] if images.shape[0] == 1 else drv_lm

    monkeypatch.setattr(face, "get_detector", lambda *a: loaded.append(("detector",) + a) or "s3fd")
    monkeypatch.setattr(face, "get_landmarker", lambda *a: loaded.append(("landmarker",) + a) or "fan")
    monkeypatch.setattr(face, "face_landmarks", landmarks)
    bar = lambda done, total: None  # noqa: E731
    best = F.best_frame_index(portrait, driving, "cpu", False, progress=bar)
    assert best == F.find_best_frame(src_lm, drv_lm) and best != 0
    assert loaded == [("detector", "face-alignment sfd", "cpu", False), ("landmarker", "cpu", False)]
    assert torch.equal(runs[0][0], portrait[:1]) and runs[0][1] is None
    assert runs[1][0] is driving and runs[1][1] is bar
    # driving frames without a face are skipped
    drv_lm[best] = None
    assert F.best_frame_index(portrait, driving, "cpu", False) not in (best, None)
    # no face in the portrait: a clear error, before the driving frames are searched
    runs.clear()
    monkeypatch.setattr(face, "face_landmarks", lambda images, det, fan, progress=None: runs.append(images) or [None])
    with pytest.raises(InputError, match="no face was found in the portrait"):
        F.best_frame_index(portrait, driving, "cpu", False)
    assert len(runs) == 1


def test_initial_frame_choice_matches_official_forward_backward_split(model):
    """demo.py with find_best_frame animates forward and backward from frame i, both relative to
    frame i: the same as every frame relative to frame i."""
    src, drv = IO["source"].permute(0, 2, 3, 1), IO["driving"].permute(0, 2, 3, 1)
    out = F.animate(model, src, drv, initial_index=2, resolution=64)
    kps, kpd = kp("kp_source"), kp("kp_driving")
    expected = F.render(model, F.prepare_source(model, IO["source"]),
                        F.normalize_kp(kps, kpd, kp("kp_driving", 2), True, True, True))
    tol.close_network(out.permute(0, 3, 1, 2), expected, tol.FOM)
    with pytest.raises(InputError, match="outside"):
        F.animate(model, src, drv, initial_index=4, resolution=64)


def test_deepstory_path_resize_animate_uint8(model):
    """SDA-sized frames -> ResizePad256 -> animation at 256 -> uint8 by truncation (+-1 level)."""
    source = IO["deepstory.source_u8"][None].float() / 255
    assert torch.equal(F.to_model_input(source), IO["deepstory.source_256"])
    driving = resize_pad((IO["deepstory.sda_frames"] / 255).permute(0, 2, 3, 1), 256)
    pred = F.animate(model, source, driving, relative=True, adapt_movement_scale=True, batch_size=2)
    tol.close_uint8((pred * 255).to(torch.uint8), IO["deepstory.prediction_u8"])


def test_both_formats_identical():
    a = F.load_fom(FIXTURES / "fom" / FORMATS[0])
    b = F.load_fom(FIXTURES / "fom" / FORMATS[1])
    oa = F.animate(a, IO["source"].permute(0, 2, 3, 1), IO["driving"].permute(0, 2, 3, 1), resolution=64)
    ob = F.animate(b, IO["source"].permute(0, 2, 3, 1), IO["driving"].permute(0, 2, 3, 1), resolution=64)
    assert torch.equal(oa, ob)


def test_streaming_equals_whole_and_keeps_memory_per_batch(model):
    src = IO["source"]
    drv = IO["driving"]
    chunks = list(F.animate_stream(model, src, (drv[i:i + 2] for i in range(0, 4, 2))))
    assert [c.shape[0] for c in chunks] == [2, 2]
    tol.close_network(torch.cat(chunks), IO["gen.prediction"], tol.FOM)


def test_frame_stream_equals_animate_and_pulls_the_driving_stream_each_time(model):
    """F.frame_stream over a driving FrameStream (pulled in the producer's batches, re-batched to batch_size): the
    frames of animate, bit for bit, on every pull; each pull pulls the driving stream once."""
    from core.frames import FrameStream

    src, drv = IO["source"].permute(0, 2, 3, 1), IO["driving"].permute(0, 2, 3, 1)
    pulls = []

    def driving_source():
        pulls.append(1)
        yield from (drv[i:i + 3] for i in range(0, 4, 3))  # batches of 3 and 1

    driving = FrameStream(driving_source, 4, 64, 64, 25.0, label="driving")
    steps = []
    stream = F.frame_stream(model, src, driving, batch_size=2, resolution=64,
                            progress=lambda done, total, preview=None: steps.append((done, total, preview.shape)))
    assert pulls == [] and (len(stream), stream.height, stream.width, stream.fps) == (4, 64, 64, 25.0)
    first = list(stream)
    assert [b.shape for b in first] == [(2, 64, 64, 3)] * 2 and pulls == [1]
    assert steps == [(1, 2, (64, 64, 3)), (2, 2, (64, 64, 3))]
    expected = F.animate(model, src, drv, batch_size=2, resolution=64)
    assert torch.equal(torch.cat(first), expected) and torch.equal(stream.materialize(), expected)
    assert pulls == [1, 1]
    # another reference frame, given as a frame
    stream = F.frame_stream(model, src, driving, batch_size=2, resolution=64, initial=drv[2:3])
    assert torch.equal(stream.materialize(), F.animate(model, src, drv, initial_index=2, batch_size=2, resolution=64))
    with pytest.raises(InputError, match="no frames"):
        F.frame_stream(model, src, FrameStream(lambda: iter(()), 0, 64, 64))
    with pytest.raises(ValueError, match="resolution"):
        F.frame_stream(lambda: None, src, driving)


def test_best_frame_in_stream_keeps_the_best_frame_while_pulling_once(monkeypatch):
    """F.best_frame_in_stream: the landmarks of each batch as it passes; the index find_best_frame gives and that
    frame itself, without a second pull; frames without a face skipped, frame 0 when none has one."""
    from core import face
    from core.frames import FrameStream

    src_lm = IO["find_best_frame.landmarks_source"].numpy()
    drv_lm = list(IO["find_best_frame.landmarks_driving"].numpy()[:4])
    portrait, driving = torch.rand(1, 6, 5, 3), torch.rand(4, 6, 5, 3)
    seen = []

    def landmarks(images, det, fan, progress=None):
        if images is portrait or images.shape[0] == 1 and torch.equal(images, portrait):
            return [src_lm]
        start = next(i for i in range(4) if torch.equal(driving[i], images[0]))
        seen.append((start, images.shape[0]))
        return drv_lm[start:start + images.shape[0]]

    monkeypatch.setattr(face, "get_detector", lambda *a: "s3fd")
    monkeypatch.setattr(face, "get_landmarker", lambda *a: "fan")
    monkeypatch.setattr(face, "face_landmarks", landmarks)
    stream = FrameStream.from_images(driving, batch_size=3)
    steps = []
    index, frame = F.best_frame_in_stream(portrait, stream, "cpu", False,
                                          progress=lambda done, total: steps.append((done, total)))
    best = F.find_best_frame(src_lm, drv_lm)
    assert index == best != 0 and torch.equal(frame, driving[best:best + 1])
    assert seen == [(0, 3), (3, 1)] and steps == [(3, 4), (4, 4)]  # one pull, in the stream's batches
    drv_lm[best] = None
    index, frame = F.best_frame_in_stream(portrait, stream, "cpu", False)
    assert index == F.find_best_frame(src_lm, drv_lm) not in (best, None)
    assert torch.equal(frame, driving[index:index + 1])
    drv_lm[:] = [None] * 4
    index, frame = F.best_frame_in_stream(portrait, stream, "cpu", False)
    assert index == 0 and torch.equal(frame, driving[:1])


def test_config_inference_matches_published_configs():
    reference = json.loads((FIXTURES / "fom" / "config.json").read_text())["model_params"]
    tiny = F.infer_config(load_state_dict(FIXTURES / "fom" / "weights.safetensors"))["model_params"]
    for section in ("kp_detector_params", "common_params"):
        assert tiny[section] == reference[section], section
    gen = dict(tiny["generator_params"])
    assert gen.pop("dense_motion_params") == {**reference["generator_params"]["dense_motion_params"], "kp_variance": 0.01}
    assert gen == {k: v for k, v in reference["generator_params"].items() if k != "dense_motion_params"}
    vox = F.preset("vox-256")["model_params"]
    # full-size shapes (no weights): build vox-256, infer its config back, same networks
    kp_det, gen = __import__("core.fom.model", fromlist=["build"]).build(F.preset("vox-256"))
    flat = {f"kp_detector.{k}": v for k, v in kp_det.state_dict().items()}
    flat.update({f"generator.{k}": v for k, v in gen.state_dict().items()})
    inferred = F.infer_config(flat)["model_params"]
    assert inferred["common_params"] == vox["common_params"]
    assert inferred["kp_detector_params"] == vox["kp_detector_params"]
    dm = dict(inferred["generator_params"]["dense_motion_params"])
    dm.pop("kp_variance")
    assert dm == vox["generator_params"]["dense_motion_params"]
    assert sum(p.numel() for p in kp_det.parameters()) == 14215368  # the manifest's counts
    assert sum(p.numel() for p in gen.parameters()) == 45575391


def test_every_manifest_key_maps():
    manifest = json.loads((FIXTURES / "fom" / "checkpoint_manifest.json").read_text())
    kp_det, gen = __import__("core.fom.model", fromlist=["build"]).build(F.preset("vox-256"))
    for name, module in (("kp_detector", kp_det), ("generator", gen)):
        ours = {k: list(v.shape) for k, v in module.state_dict().items()}
        theirs = {k: v["shape"] for k, v in manifest["modules"][name]["state_dict"].items()}
        assert ours == theirs, name


def test_loading_errors(tmp_path):
    flat = load_state_dict(FIXTURES / "fom" / "weights.safetensors")
    broken = dict(flat)
    broken.pop("generator.final.bias")
    broken["generator.extra.weight"] = torch.zeros(1)
    save_file(broken, tmp_path / "broken.safetensors")
    with pytest.raises(CheckpointError) as err:
        F.load_fom(tmp_path / "broken.safetensors")
    assert "Missing keys (1): final.bias" in str(err.value) and "Unexpected keys (1): extra.weight" in str(err.value)
    save_file({k: v for k, v in flat.items() if k.startswith("generator.")}, tmp_path / "gen_only.safetensors")
    with pytest.raises(CheckpointError, match="no kp_detector weights"):
        F.load_fom(tmp_path / "gen_only.safetensors")
    save_file({"model.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="not a First Order Motion Model checkpoint"):
        F.load_fom(tmp_path / "other.safetensors")
    wrong = dict(flat)
    wrong["generator.first.conv.weight"] = torch.zeros(8, 3, 5, 5)
    save_file(wrong, tmp_path / "wrong.safetensors")
    with pytest.raises(CheckpointError, match="Wrong shapes"):
        F.load_fom(tmp_path / "wrong.safetensors")


def test_extra_keys_of_the_official_file_are_ignored(tmp_path):
    ckpt = torch.load(FIXTURES / "fom" / "tiny-cpk.pth.tar", weights_only=True)
    ckpt["optimizer_generator"] = {"state": {0: {"exp_avg": torch.ones(3), "step": torch.tensor(1.0)}},
                                   "param_groups": [{"lr": 2e-4, "betas": (0.5, 0.999), "params": [0]}]}
    torch.save(ckpt, tmp_path / "vox-cpk.pth.tar", _use_new_zipfile_serialization=False)
    F.load_fom(tmp_path / "vox-cpk.pth.tar")


# ----------------------------------------------------------------------------- node
def test_node_through_comfy_contract(comfy_pack):
    models = Path(comfy_pack.folder_paths.models_dir) / "fom"
    models.mkdir(parents=True, exist_ok=True)
    (models / "tiny.safetensors").write_bytes((FIXTURES / "fom" / "weights.safetensors").read_bytes())
    node_cls = comfy_pack.NODE_CLASS_MAPPINGS["TalkingHead_FOMAnimate"]
    choices = node_cls.INPUT_TYPES()["required"]["checkpoint"][0]
    assert choices[0] == "vox-cpk.pth.tar" and "tiny.safetensors" in choices
    source = IO["deepstory.source_u8"][None].float() / 255
    driving = resize_pad((IO["deepstory.sda_frames"] / 255).permute(0, 2, 3, 1), 256)
    utils = __import__("comfy.utils", fromlist=["x"])
    utils.updates.clear()
    frames, _ = node_cls().run(source, driving, "tiny.safetensors", True, True, False, 1, "fp32")
    assert frames.shape == (2, 256, 256, 3) and frames.dtype == torch.float32
    tol.close_uint8((frames * 255).to(torch.uint8), IO["deepstory.prediction_u8"])
    assert [u[:2] for u in utils.updates] == [(1, 2), (2, 2)] and utils.updates[-1][2] is not None  # preview
    mm = comfy_pack.comfy
    assert len(mm.current_loaded_models) == 2  # kp detector + generator under ComfyUI's manager
    node_cls().run(source, driving, "tiny.safetensors", True, True, False, 2, "fp32", keep_model_loaded=False)
    assert mm.current_loaded_models == [] and sub(comfy_pack, "core.cache").CACHE.entries("fom") == []


def test_node_cancel_between_batches(comfy_pack):
    models = Path(comfy_pack.folder_paths.models_dir) / "fom"
    models.mkdir(parents=True, exist_ok=True)
    (models / "tiny.safetensors").write_bytes((FIXTURES / "fom" / "weights.safetensors").read_bytes())
    mm = comfy_pack.comfy
    utils = __import__("comfy.utils", fromlist=["x"])
    calls = []

    def hook(value, total, preview, node_id=None):
        calls.append(value)
        mm.interrupt_current_processing(True)
        mm.throw_exception_if_processing_interrupted()

    utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            comfy_pack.NODE_CLASS_MAPPINGS["TalkingHead_FOMAnimate"]().run(
                torch.rand(1, 64, 64, 3), torch.rand(6, 256, 256, 3), "tiny.safetensors", True, True, False, 1, "auto")
    finally:
        utils.set_progress_bar_global_hook(None)
    assert calls == [1]


def test_missing_checkpoint_message(pack, monkeypatch, tmp_path):
    monkeypatch.setenv("TALKINGHEAD_OFFLINE", "1")
    errors = sub(pack, "core.errors")
    node = pack.NODE_CLASS_MAPPINGS["TalkingHead_FOMAnimate"]()
    with pytest.raises(errors.WeightsMissingError) as err:
        node.run(torch.rand(1, 64, 64, 3), torch.rand(2, 256, 256, 3), "vox-cpk.pth.tar", True, True, False, 1, "auto")
    msg = str(err.value)
    assert "vox-cpk.pth.tar" in msg and "first-order-model" in msg and "CC BY-NC" in msg
    assert str(tmp_path / "models" / "fom") in msg


def test_fom_workflow_headless_with_tiny_weights(tmp_path):
    """workflows/fom_animate_video.json end to end: portrait + driving video -> FOMAnimate -> MuxVideo."""
    from core import video

    (tmp_path / "models" / "fom").mkdir(parents=True)
    (tmp_path / "models" / "fom" / "tiny-cpk.pth.tar").write_bytes((FIXTURES / "fom" / "tiny-cpk.pth.tar").read_bytes())
    mp4 = run_headless(tmp_path, "fom_animate_video.json", "animate.checkpoint=tiny-cpk.pth.tar",
                       "portrait.detector=center", inputs=ROOT / "example_inputs", models=tmp_path / "models",
                       offline=False, timeout=300)
    size, codec, seconds = mp4_facts(mp4)
    assert size == (256, 256, 50) and codec == "aac" and seconds == pytest.approx(2.0, abs=2e-3)
    frames = np.stack(list(video.read_frames(mp4)))
    assert frames.std(axis=0).mean() > 0.5  # the frames differ: the portrait moves with the driving video


def test_node_find_best_frame_uses_the_landmark_match(pack, monkeypatch, tmp_path):
    """With find_best_frame on, the node takes the reference frame from face landmarks (stubbed
    here: the detector/FAN themselves are tested in test_face.py / test_landmarks.py)."""
    (tmp_path / "models" / "fom").mkdir(parents=True)
    (tmp_path / "models" / "fom" / "tiny.safetensors").write_bytes((FIXTURES / "fom" / "weights.safetensors").read_bytes())
    face = sub(pack, "core.face")
    src_lm = IO["find_best_frame.landmarks_source"].numpy()
    drv_lm = IO["find_best_frame.landmarks_driving"].numpy()[:4]
    monkeypatch.setattr(face, "get_detector", lambda *a, **k: "detector")
    monkeypatch.setattr(face, "get_landmarker", lambda *a, **k: "fan")
    monkeypatch.setattr(face, "face_landmarks",
                        lambda images, det, fan, progress=None: [src_lm] if images.shape[0] == 1 else list(drv_lm))
    best = F.find_best_frame(src_lm, drv_lm)
    assert best != 0
    source = IO["source"].permute(0, 2, 3, 1)
    driving = IO["driving"].permute(0, 2, 3, 1)
    node = pack.NODE_CLASS_MAPPINGS["TalkingHead_FOMAnimate"]()
    frames, _ = node.run(source, driving, "tiny.safetensors", True, True, True, 2, "fp32")
    model = F.load_fom(FIXTURES / "fom" / "weights.safetensors")
    expected = F.animate(model, source, driving, initial_index=best)
    tol.close_network(frames, expected, tol.FOM)
    monkeypatch.setattr(face, "face_landmarks", lambda images, det, fan, progress=None: [None] * images.shape[0])
    errors = sub(pack, "core.errors")
    with pytest.raises(errors.InputError, match="no face was found in the portrait"):
        node.run(source, driving, "tiny.safetensors", True, True, True, 2, "fp32")


def test_node_takes_a_driving_frame_stream(pack, tmp_path, monkeypatch):
    """FOMAnimate's driving_frames: the same frames as with the IMAGE driving input; the frame_stream output pulls
    the driving stream again on each pull and, with keep_model_loaded off, frees the model after each pull;
    find_best_frame pulls the driving stream once for the landmarks; exactly one driving input."""
    (tmp_path / "models" / "fom").mkdir(parents=True)
    (tmp_path / "models" / "fom" / "tiny.safetensors").write_bytes((FIXTURES / "fom" / "weights.safetensors").read_bytes())
    frames_mod, errors = sub(pack, "core.frames"), sub(pack, "core.errors")
    cache = sub(pack, "core.cache").CACHE
    source, driving = IO["source"].permute(0, 2, 3, 1), IO["driving"].permute(0, 2, 3, 1)
    pulls = []

    def driving_source():
        pulls.append(1)
        yield from (driving[i:i + 3] for i in range(0, 4, 3))

    stream_in = frames_mod.FrameStream(driving_source, 4, 64, 64, 25.0, label="driving")
    node = pack.NODE_CLASS_MAPPINGS["TalkingHead_FOMAnimate"]()
    expected, _ = node.run(source, driving, "tiny.safetensors", True, True, False, 2, "fp32")
    frames, stream = node.run(source, None, "tiny.safetensors", True, True, False, 2, "fp32",
                              driving_frames=stream_in)
    assert torch.equal(frames, expected) and pulls == [1]
    assert torch.equal(stream.materialize(), expected) and pulls == [1, 1]
    # only the stream connected: no IMAGE made, nothing pulled now; the model is loaded again when it is pulled
    graph = {"5": {"class_type": "TalkingHead_FOMAnimate", "inputs": {}},
             "6": {"class_type": "TalkingHead_MuxVideo", "inputs": {"frames": ["5", 1]}}}
    frames, stream = node.run(source, None, "tiny.safetensors", True, True, False, 2, "fp32", keep_model_loaded=False,
                              driving_frames=stream_in, prompt=graph, unique_id="5")
    assert frames is None and pulls == [1, 1] and len(cache.entries("fom")) == 1  # kept for the pull
    cache.unload("fom")
    assert torch.equal(stream.materialize(), expected) and pulls == [1, 1, 1]
    assert cache.entries("fom") == []  # freed when the pull ended
    # find_best_frame: the landmarks from one pull, then the animation from another
    face = sub(pack, "core.face")
    src_lm = IO["find_best_frame.landmarks_source"].numpy()
    drv_lm = list(IO["find_best_frame.landmarks_driving"].numpy()[:4])
    monkeypatch.setattr(face, "get_detector", lambda *a, **k: "detector")
    monkeypatch.setattr(face, "get_landmarker", lambda *a, **k: "fan")

    def landmarks(images, det, fan, progress=None):
        if torch.equal(images, source[:1]):
            return [src_lm]
        start = next(i for i in range(4) if torch.equal(driving[i], images[0]))
        return drv_lm[start:start + images.shape[0]]

    monkeypatch.setattr(face, "face_landmarks", landmarks)
    best = F.find_best_frame(src_lm, drv_lm)
    pulls.clear()
    frames, _ = node.run(source, None, "tiny.safetensors", True, True, True, 2, "fp32", driving_frames=stream_in)
    assert pulls == [1, 1] and best != 0
    assert torch.equal(frames, node.run(source, driving, "tiny.safetensors", True, True, True, 2, "fp32")[0])
    with pytest.raises(errors.InputError, match="connect either driving_frames .* or driving"):
        node.run(source, None, "tiny.safetensors", True, True, False, 2, "fp32")
    with pytest.raises(errors.InputError, match="not both"):
        node.run(source, driving, "tiny.safetensors", True, True, False, 2, "fp32", driving_frames=stream_in)


def test_inference_optimisation_keeps_outputs():
    """get_fom's fused, sub-pixel, channels-last networks give the official outputs."""
    model = F.load_fom(FIXTURES / "fom" / "weights.safetensors")
    fast = F.load_fom(FIXTURES / "fom" / "weights.safetensors").optimize_for_inference()
    ups = [m for m in fast.generator.modules() if hasattr(m, "phase3")]
    assert ups and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.generator.up_blocks.modules())
    src, drv = IO["source"].permute(0, 2, 3, 1), IO["driving"].permute(0, 2, 3, 1)
    tol.close_network(F.animate(fast, src, drv, resolution=64).permute(0, 3, 1, 2), IO["gen.prediction"], tol.FOM)
    tol.close_network(F.animate(fast, src, drv, resolution=64), F.animate(model, src, drv, resolution=64), tol.FOM)
    kp_fast = F.keypoints(fast, IO["driving"])
    tol.close_network(kp_fast["value"], IO["kp_driving.value"], tol.FOM_KP)
    tol.close_network(kp_fast["jacobian"], IO["kp_driving.jacobian"], tol.FOM_KP)


def test_bf16_autocast_on_cpu_stays_close(model):
    """precision=bf16 runs the convolutions in bfloat16 (fast on CPUs with AVX-512 BF16 / AMX)
    while the keypoint maths stays float32: frames within a few uint8 levels of fp32."""
    src, drv = IO["source"].permute(0, 2, 3, 1), IO["driving"].permute(0, 2, 3, 1)
    fp32 = F.animate(model, src, drv, resolution=64, device="cpu", precision="fp32")
    bf16 = F.animate(model, src, drv, resolution=64, device="cpu", precision="bf16")
    err = (bf16 - fp32).abs().max().item()
    assert 0 < err < 0.03
