"""LoadPortrait: a portrait from the input folder (or an IMAGE), its face found and cropped."""
from __future__ import annotations

import hashlib

from ..core import face, image as core_image
from ..core.errors import InputError
from ..core.face import load_portrait
from . import specs
from .base import (IMAGE_EXTENSIONS, PORTRAIT_TYPE, list_input_files, register, resolve_input_file,
                   validate_input_file)


@register("LoadPortrait", category="portrait")
class LoadPortrait:
    """Load a portrait photo, find the face and cut a square crop around it. The crop record lets the renderers paste
    the animated face back into the full picture. EXIF rotation, transparency, grayscale, palette and 16-bit files
    are handled."""
    OUTPUTS = (
        ("portrait", PORTRAIT_TYPE, "The portrait for the animation nodes (crop, full image, crop record)."),
        ("face_crop", "IMAGE", "The square face crop."),
        ("full_image", "IMAGE", "The whole picture, upright, RGB."),
    )

    INPUTS = {
        "required": {
            "image": specs.dynamic(lambda: (list_input_files(IMAGE_EXTENSIONS) or [""], {
                "image_upload": True,
                "tooltip": "A photo from ComfyUI's input folder (ignored when an IMAGE is connected)."})),
            "detector": (face.DETECTOR_CHOICES, {
                "default": face.DETECTOR_CHOICES[0],
                "tooltip": "How the face is found. 'center': the picture is centred on the face; "
                           "'none (already cropped)': use the whole picture as the face crop."}),
            "crop_size": ("INT", {"default": face.DEFAULT_CROP_SIZE, "min": 64, "max": 2048, "step": 8,
                                  "tooltip": "Side of the square face crop in pixels."}),
            "scale": ("FLOAT", {"default": face.DEFAULT_SCALE, "min": 1.0, "max": 4.0, "step": 0.05,
                                "tooltip": "Crop side relative to the detected face box (larger = more hair "
                                           "and shoulders)."}),
            "vy": ("FLOAT", {"default": face.DEFAULT_VY, "min": -1.0, "max": 1.0, "step": 0.01,
                             "tooltip": "Vertical shift of the crop, in face-box heights (negative = up)."}),
        },
        "optional": {
            "image_in": ("IMAGE", {"tooltip": "Use this picture instead of the file (first frame of a batch)."}),
            "device": specs.device("Where the face detector runs."),
            "auto_download": specs.auto_download("missing detector weights"),
        },
    }

    @classmethod
    def VALIDATE_INPUTS(cls, image, input_types=None):
        # nothing chosen, or an IMAGE connected to image_in (which replaces the file): no file to check
        # (ComfyUI passes the types of the linked inputs as input_types; the headless runner does too)
        linked = (input_types or {}).get("image_in")
        if linked is not None:  # declaring input_types turns ComfyUI's own type check off: do it here
            return True if linked == "IMAGE" else f"image_in needs an IMAGE, got {linked}"
        if not image:
            return True
        return validate_input_file(image, "image")

    @classmethod
    def IS_CHANGED(cls, image, **kwargs):
        try:
            path = resolve_input_file(image, "image")
        except InputError:
            return ""
        return hashlib.sha256(path.read_bytes()).hexdigest()

    def run(self, image, detector, crop_size, scale, vy, image_in=None, device="auto", auto_download=True):
        if image_in is not None:
            picture = core_image.ensure_image(image_in)[:1]
        elif image:
            picture = core_image.load_image(resolve_input_file(image, "image"))
        else:
            raise InputError("LoadPortrait needs a picture: choose a file or connect an IMAGE to image_in")
        portrait = load_portrait(picture, detector, crop_size, scale, vy, device, download=auto_download)
        return {"ui": {"text": [portrait.summary()]}, "result": (portrait, portrait.crop, portrait.full)}
